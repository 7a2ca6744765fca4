"""The package as pip installs it: the wheel carries the SQL and templates, and works outside the checkout."""

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import applied_versions

from identity.migrations import MIGRATIONS_DIR
from identity.queries import sql_files, stem

pytestmark = pytest.mark.slow  # builds and installs a wheel

ROOT = Path(__file__).resolve().parent.parent
# What builds, tests and the embedded server leave in a checkout: none of it goes into a build.
LEFT_BEHIND = shutil.ignore_patterns(
    ".git",
    ".venv",
    ".data",
    "build",
    "*.egg-info",
    "__pycache__",
    ".pytest_cache",
    ".hypothesis",
    ".ruff_cache",
)
# Run by the installed package: where it was imported from, where its SQL is, and the docs page.
PROBE = """
import identity, identity.queries
print(identity.__file__)
print(identity.queries.SQL_DIR)
response = identity.create_app().test_client().get("/docs")
print(response.status_code, 'id="swagger-ui"' in response.get_data(as_text=True))
"""


def run(command, **kwargs):
    """Run command; fail with its output unless it succeeds; return its stdout."""
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, f"{command} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The project's wheel, built by pip with this venv's setuptools and no network.

    Built from a copy: setuptools builds in the source tree, and would pack whatever an earlier
    build left in its build/ folder.
    """
    source = tmp_path_factory.mktemp("source") / "identity"
    shutil.copytree(ROOT, source, symlinks=True, ignore=LEFT_BEHIND)
    dist = tmp_path_factory.mktemp("dist")
    pip_wheel = ["-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dist)]
    run([sys.executable, *pip_wheel, str(source)])
    (path,) = dist.glob("identity-*.whl")
    return path


def files_under(directory):
    """Every file under directory, as paths relative to the repository root."""
    return {path.relative_to(ROOT).as_posix() for path in directory.rglob("*") if path.is_file()}


def test_the_wheel_carries_every_sql_file_and_template_the_package_reads(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    # sql/bench/ is the benchmark's own, read from the checkout by tests/bench/run.py.
    sql = {name for name in files_under(ROOT / "sql") if not name.startswith("sql/bench/")}
    assert {name for name in names if name.startswith("identity/sql/")} == {
        f"identity/{name}" for name in sql
    }
    assert files_under(ROOT / "identity" / "templates") <= names
    assert {f"identity/{path.name}" for path in (ROOT / "identity").glob("*.py")} <= names


def test_installed_outside_the_checkout_it_migrates_and_serves_its_docs(wheel, tmp_path, empty_database_url):
    site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)]
    )
    # The venv gives the dependencies; PYTHONPATH, searched before it, gives the installed package.
    env = {**os.environ, "PYTHONPATH": str(site), "DATABASE_URL": empty_database_url}
    migrate = [sys.executable, "-m", "flask", "--app", "identity", "migrate"]
    versions = [stem(path) for path in sql_files(MIGRATIONS_DIR)]
    assert run(migrate, cwd=elsewhere, env=env) == f"applied: {', '.join(versions)}\n"
    assert applied_versions(empty_database_url) == versions
    package, sql_dir, docs = run([sys.executable, "-c", PROBE], cwd=elsewhere, env=env).splitlines()
    assert Path(package) == site / "identity" / "__init__.py"
    assert Path(sql_dir) == site / "identity" / "sql"
    assert docs == "200 True"


def test_the_editable_install_finds_the_checkouts_files_from_another_directory(tmp_path, empty_database_url):
    if not editable_install():
        pytest.skip("identity is not installed editable in this environment (make test installs it so)")
    env = {**os.environ, "DATABASE_URL": empty_database_url}
    env.pop("PYTHONPATH", None)
    migrate = [sys.executable, "-m", "flask", "--app", "identity", "migrate"]
    assert run(migrate, cwd=tmp_path, env=env).startswith("applied: ")
    package, sql_dir, docs = run([sys.executable, "-c", PROBE], cwd=tmp_path, env=env).splitlines()
    assert (Path(package), Path(sql_dir), docs) == (
        ROOT / "identity" / "__init__.py",
        ROOT / "identity" / "sql",
        "200 True",
    )


def editable_install():
    """Whether identity is installed in this environment in editable mode (PEP 660) from this checkout.

    Every distribution of that name is looked at: setuptools leaves identity.egg-info in the checkout,
    which pytest's pythonpath puts first, and that one records no install.
    """
    for distribution in importlib.metadata.distributions(name="identity"):
        direct_url = json.loads(distribution.read_text("direct_url.json") or "{}")
        if direct_url.get("dir_info", {}).get("editable") and direct_url["url"] == ROOT.as_uri():
            return True
    return False
