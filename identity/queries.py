"""Named SQL statements, read once from the .sql files at the top of the package's sql/ folder.

The SQL ships inside the package: identity/sql is a link to the repository's top-level sql/, and
setup.cfg's package data copies what it holds into the wheel. So it is found the same way, through
importlib.resources, in a checkout, an editable install and an installed wheel.
"""

import re
from importlib.resources import files

SQL_DIR = files("identity") / "sql"
HEADER = re.compile(r"^-- ([a-z_]+) --$", re.MULTILINE)


def sql_files(directory):
    """The .sql files directly in directory (a package resource or a path), in name order."""
    return sorted((item for item in directory.iterdir() if item.name.endswith(".sql")), key=lambda f: f.name)


def stem(sql_file):
    """The name of a .sql file without its suffix (a migration's version)."""
    return sql_file.name.removesuffix(".sql")


def parse(text):
    """Split a file into {name: statement} at each `-- name --` header line."""
    parts = HEADER.split(text)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=False)}


def load(directory=SQL_DIR):
    """Read every .sql file directly in directory into one dict of statements."""
    statements = {}
    for sql_file in sql_files(directory):
        statements.update(parse(sql_file.read_text()))
    return statements


QUERIES = load()
