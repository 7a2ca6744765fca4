"""Named SQL statements, read once from the .sql files at the top of sql/."""

import re
from pathlib import Path

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
HEADER = re.compile(r"^-- ([a-z_]+) --$", re.MULTILINE)


def parse(text):
    """Split a file into {name: statement} at each `-- name --` header line."""
    parts = HEADER.split(text)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=False)}


def load(directory=SQL_DIR):
    """Read every .sql file directly in directory into one dict of statements."""
    statements = {}
    for path in sorted(directory.glob("*.sql")):
        statements.update(parse(path.read_text()))
    return statements


QUERIES = load()
