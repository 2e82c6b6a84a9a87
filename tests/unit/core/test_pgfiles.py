"""
pgtls.core.pgfiles: the rules postgresql.conf, pg_hba.conf and pg_ident.conf
share (include names, include_dir listing, ``%m``, case folding, booleans),
and that conf and hba both follow them.
"""

from __future__ import annotations

import errno
import ipaddress
import os
from pathlib import Path

import pytest

from pgtls.core import pgfiles
from pgtls.core.conf import ConfigError, load_settings
from pgtls.core.hba import Admission, Client, HbaError, Refusal, load_rules

# Names whose order differs between the bytes (strcmp, as PostgreSQL's
# ParseConfigDirectory sorts them) and the decoded characters: a byte that
# is not UTF-8 decodes to a surrogate escape (U+DCFF) that sorts before
# U+1F600 as a character, yet 0xFF sorts after 0xF0 as a byte.
_BYTES_ORDER = (b"Z.conf", b"z.conf", "é.conf".encode(), "\U0001f600.conf".encode(), b"\xff.conf")


def _write_bytes_name(directory: Path, name: bytes, text: str) -> None:
    """Write a file whose name is given as bytes (it need not be UTF-8)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(os.path.join(os.fsencode(directory), name), "wb") as file:
        file.write(text.encode())


def test_include_dir_files_sort_by_bytes(tmp_path: Path) -> None:
    """include_dir lists *.conf files in strcmp order of their names' bytes."""
    for name in reversed(_BYTES_ORDER):
        _write_bytes_name(tmp_path / "d", name, "")
    files = pgfiles.include_dir_files("d", str(tmp_path / "postgresql.conf"))
    assert [os.fsencode(os.path.basename(path)) for path in files] == list(_BYTES_ORDER)
    # Character order would have differed: the test pins the drift it fixes.
    assert sorted(os.fsdecode(name) for name in _BYTES_ORDER) != [
        os.fsdecode(name) for name in _BYTES_ORDER
    ]


def test_include_dir_files_skips_dot_files_other_names_and_directories(tmp_path: Path) -> None:
    """Only regular *.conf names not starting with a dot are listed, as directory/name."""
    for name in (b"a.conf", b".b.conf", b"c.txt", b"d.conf~"):
        _write_bytes_name(tmp_path / "d", name, "")
    (tmp_path / "d" / "e.conf").mkdir()
    files = pgfiles.include_dir_files(str(tmp_path / "d"), "/elsewhere/pg_hba.conf")
    assert files == [str(tmp_path / "d" / "a.conf")]


def test_include_dir_files_are_named_directory_slash_name(tmp_path: Path) -> None:
    """
    Each file is the directory as resolved, "/", its name (ParseConfigDirectory's
    "%s/%s"): an absolute directory is kept as written, a relative one canonicalized.
    """
    _write_bytes_name(tmp_path / "d", b"a.conf", "")
    written = f"{tmp_path}//d/../d"
    assert pgfiles.include_dir_files(written, "/etc/pg_hba.conf") == [f"{written}/a.conf"]
    calling = str(tmp_path / "postgresql.conf")
    assert pgfiles.include_dir_files("./d//", calling) == [str(tmp_path / "d" / "a.conf")]


@pytest.mark.parametrize(
    ("location", "reason"),
    [
        (" \t", 'empty configuration directory name: " \t"'),
        (
            "nodir",
            'could not open configuration directory "/etc/x/nodir": No such file or directory',
        ),
    ],
)
def test_include_dir_problems(location: str, reason: str) -> None:
    """A blank or unreadable directory is an IncludeProblem with PostgreSQL's words."""
    with pytest.raises(pgfiles.IncludeProblem) as caught:
        pgfiles.include_dir_files(location, "/etc/x/postgresql.conf")
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    ("location", "calling", "resolved"),
    [
        ("a.conf", "/etc/pg/postgresql.conf", "/etc/pg/a.conf"),
        ("../b/./a.conf", "/etc/pg/postgresql.conf", "/etc/b/a.conf"),
        # AbsoluteConfigLocation keeps an absolute name as written.
        ("/srv//x/../a.conf", "/etc/pg/postgresql.conf", "/srv//x/../a.conf"),
    ],
)
def test_absolute(location: str, calling: str, resolved: str) -> None:
    """Relative names resolve against the calling file's directory."""
    assert pgfiles.absolute(location, calling) == resolved


def test_strerror_is_the_c_library_text() -> None:
    """%m is strerror(errno), whatever text the OSError carries."""
    assert pgfiles.strerror(OSError(errno.ENOENT, "other words")) == os.strerror(errno.ENOENT)
    assert pgfiles.strerror(OSError("no errno")) == "no errno"


def test_errors_name_file_and_line() -> None:
    """str() of a file error is FILE:LINE: reason, or FILE: reason without a line."""
    assert str(pgfiles.ConfigFileError("/a.conf", 3, "bad")) == "/a.conf:3: bad"
    assert str(pgfiles.ConfigFileError("/a.conf", None, "bad")) == "/a.conf: bad"
    assert isinstance(HbaError("/a", 1, "x"), pgfiles.ConfigFileError)
    assert isinstance(ConfigError("/a", 1, "x"), pgfiles.ConfigFileError)


def test_ascii_lower_folds_ascii_only() -> None:
    """Only A-Z fold, as pg_tolower in the C locale."""
    assert pgfiles.ascii_lower("ÉCOLE Include_Dir") == "École include_dir"


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("on", True),
        ("OFF", False),
        ("t", True),
        ("FaLs", False),
        ("y", True),
        ("n", False),
        ("1", True),
        ("0", False),
        ("o", None),
        ("", None),
        ("01", None),
        ("truex", None),
        ("\u0130", None),
    ],
)
def test_parse_bool(text: str, value: bool | None) -> None:
    """PostgreSQL's parse_bool: prefixes of the words, two letters of on/off."""
    assert pgfiles.parse_bool(text) is value


def test_conf_include_dir_reads_in_bytes_order(tmp_path: Path) -> None:
    """postgresql.conf's include_dir reads files in bytes order: the last one read wins."""
    for index, name in enumerate(_BYTES_ORDER):
        _write_bytes_name(tmp_path / "conf.d", name, f"port = {5000 + index}\n")
    (tmp_path / "postgresql.conf").write_text("include_dir 'conf.d'\n")
    assert load_settings(str(tmp_path)).port == 5000 + len(_BYTES_ORDER) - 1


def test_hba_include_dir_reads_in_bytes_order(tmp_path: Path) -> None:
    """pg_hba.conf's include_dir reads files in bytes order: the first line that matches wins."""
    for index, name in enumerate(_BYTES_ORDER[3:]):
        method = "reject" if index == 0 else "trust"
        _write_bytes_name(tmp_path / "d", name, f"host all all all {method}\n")
    (tmp_path / "pg_hba.conf").write_text("include_dir d\n")
    rules = load_rules(
        str(tmp_path / "pg_hba.conf"),
        str(tmp_path / "pg_ident.conf"),
        ssl_enabled=False,
        client_ca_loaded=False,
        local_networks=(ipaddress.ip_interface("127.0.0.1/8"),),
    )
    client = Client(ipaddress.ip_address("127.0.0.1"), ssl=False, database="db", user="alice")
    decision = rules.match(client)
    assert isinstance(decision, Refusal), decision
    assert not isinstance(decision, Admission)
