import pytest

from blackbox.core.errors import PointError
from blackbox.core.point import parse_point, read_point_lines, shorten


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("2 5 32 -5", (2.0, 5.0, 32.0, -5.0)),
        ("   2    5 32   -5.00000000000000   ", (2.0, 5.0, 32.0, -5.0)),
        ("\t1 -0 0.10000000000000", (1.0, -0.0, 0.1)),
        ("1.23457e+06 -99996.8579999999929", (1234570.0, -99996.8579999999929)),
        ("+3 .5 4. 1E-3", (3.0, 0.5, 4.0, 0.001)),
    ],
)
def test_parses_what_nomad_writes(line: str, expected: tuple[float, ...]) -> None:
    assert parse_point(line) == expected


@pytest.mark.parametrize("token", ["abc", "nan", "inf", "-inf", "1_000", "0x10", "1e999", "1,5", "--1"])
def test_rejects_what_is_not_a_finite_decimal(token: str) -> None:
    with pytest.raises(PointError, match="value 2"):
        parse_point(f"1 {token} 3")


def test_keeps_blank_lines_in_place(tmp_path) -> None:
    path = tmp_path / "x.txt"
    path.write_bytes(b"1 2\n\n  \n3 4\n\xff\xfe 1\n")
    lines = read_point_lines(path)
    assert [bool(line.strip()) for line in lines] == [True, False, False, True, True]
    with pytest.raises(PointError):  # undecodable bytes fail their own line only
        parse_point(lines[4])


@pytest.mark.parametrize("separator", ["\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\v", "\f"])
def test_lines_end_at_newline_only(tmp_path, separator: str) -> None:
    """NOMAD and every solver count lines by "\\n": a line holding another of Python's line breaks is one line,
    one point (those characters are whitespace between its values), never two."""
    path = tmp_path / "x.txt"
    path.write_text(f"1{separator}2 3\n4 5\n", encoding="utf-8")
    lines = read_point_lines(path)
    assert lines == [f"1{separator}2 3", "4 5"]
    assert parse_point(lines[0]) == (1.0, 2.0, 3.0)


def test_crlf_and_a_missing_final_newline(tmp_path) -> None:
    path = tmp_path / "x.txt"
    path.write_bytes(b"1 2\r\n\r\n3 4")
    assert read_point_lines(path) == ["1 2", "", "3 4"]
    path.write_bytes(b"")
    assert read_point_lines(path) == []


def test_a_huge_token_is_shown_cut(tmp_path) -> None:
    with pytest.raises(PointError) as error:
        parse_point("x" * 10_000_000)
    assert len(str(error.value)) < 300 and "(10000002 characters)" in str(error.value)
    assert shorten("abc") == "abc" and shorten("a" * 201) == "a" * 200 + "... (201 characters)"
