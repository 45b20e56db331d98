"""Tests for node_task/topwords.py, run as a real subprocess as it is on a compute node.

Expected results come from ``reference_top``, a deliberately naive count of the whole text,
so that the streaming, chunking and counting shortcuts of the script are checked against an
independent implementation.
"""

from __future__ import annotations

import os
import string
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "node_task" / "topwords.py"
RULE = "-" * 22
FOOTER_VARIABLES = ("AZ_BATCH_NODE_ID", "AZ_BATCH_TASK_ID", "AZ_BATCH_JOB_ID", "AZ_BATCH_POOL_ID")


def reference_top(text: str, top: int, ignore_case: bool = False) -> list[tuple[str, int]]:
    """The ``top`` most frequent words of ``text``, ties in order of first appearance."""
    counts: dict[str, int] = {}
    first_seen: dict[str, int] = {}
    for position, token in enumerate(text.split()):
        word = token.strip(string.punctuation)
        if ignore_case:
            word = word.lower()
        if word:
            counts[word] = counts.get(word, 0) + 1
            first_seen.setdefault(word, position)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], first_seen[item[0]]))
    return ranked[:top]


def report(words: list[tuple[str, int]], footer: list[str] | None = None) -> str:
    """The expected content of an output file."""
    lines = ["Word\tCount", RULE, *(f"{word}:\t{count}" for word, count in words), RULE]
    return "".join(line + "\n" for line in [*lines, *(footer or [])])


def run_topwords(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the script in ``cwd`` with an environment free of variables it reads, plus ``env``."""
    clean = {
        name: value
        for name, value in os.environ.items()
        if name not in FOOTER_VARIABLES and name != "TOPWORDS_CHUNK_SIZE"
    }
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=cwd,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )


def count_file(
    tmp_path: Path,
    data: bytes,
    *options: str,
    env: dict[str, str] | None = None,
) -> str:
    """Write ``data`` to input.txt, run the script on it, and return the output file's text."""
    (tmp_path / "input.txt").write_bytes(data)
    result = run_topwords(tmp_path, "input.txt", *options, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return (tmp_path / "input_OUTPUT.txt").read_text(encoding="utf-8")


def test_exact_output_format(tmp_path: Path) -> None:
    output = count_file(tmp_path, b"the cat and the hat\nand the bat\n", "--top", "3")
    lines = ["Word\tCount", "-" * 22, "the:\t3", "and:\t2", "cat:\t1", "-" * 22]
    assert output == "".join(line + "\n" for line in lines)


def test_output_is_named_after_input_in_current_directory(tmp_path: Path) -> None:
    books = tmp_path / "books"
    books.mkdir()
    (books / "taskfile_1.txt").write_text("one two two\n", encoding="utf-8")
    result = run_topwords(tmp_path, "books/taskfile_1.txt", "--top", "5")
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["books", "taskfile_1_OUTPUT.txt"]
    output = (tmp_path / "taskfile_1_OUTPUT.txt").read_text(encoding="utf-8")
    assert output == report([("two", 2), ("one", 1)])


def test_existing_output_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "input_OUTPUT.txt").write_text("stale\n" * 1000, encoding="utf-8")
    assert count_file(tmp_path, b"fresh\n", "--top", "1") == report([("fresh", 1)])
    assert sorted(path.name for path in tmp_path.iterdir()) == ["input.txt", "input_OUTPUT.txt"]


def test_top_larger_than_vocabulary_lists_every_word(tmp_path: Path) -> None:
    text = "b a b c a b"
    assert count_file(tmp_path, text.encode(), "--top", "100") == report(reference_top(text, 100))


def test_ties_keep_order_of_first_appearance(tmp_path: Path) -> None:
    # "gamma." is the first token, but the bare "gamma" only appears after "alpha" and "beta":
    # gamma must still rank first among the words counted twice.
    text = "gamma. alpha beta delta gamma alpha (beta) epsilon delta"
    expected = [("gamma", 2), ("alpha", 2), ("beta", 2), ("delta", 2), ("epsilon", 1)]
    assert reference_top(text, 10) == expected
    assert count_file(tmp_path, text.encode(), "--top", "10") == report(expected)


def test_counting_is_case_sensitive_by_default(tmp_path: Path) -> None:
    text = "The the THE the cat Cat"
    expected = [("the", 2), ("The", 1), ("THE", 1), ("cat", 1), ("Cat", 1)]
    assert count_file(tmp_path, text.encode(), "--top", "10") == report(expected)


def test_ignore_case(tmp_path: Path) -> None:
    text = "The the THE tHe cat, Cat. dog ÉTÉ été"
    expected = [("the", 4), ("cat", 2), ("été", 2), ("dog", 1)]
    assert reference_top(text, 10, ignore_case=True) == expected
    output = count_file(tmp_path, text.encode(), "--top", "10", "--ignore-case")
    assert output == report(expected)


def test_punctuation_is_stripped_from_both_ends_only(tmp_path: Path) -> None:
    text = "\"Hello,\" (hello) hello! don't e.g. ... -- !?! #tag a-b «word» 'don't' x"
    expected = [
        ("hello", 2),
        ("don't", 2),
        ("Hello", 1),
        ("e.g", 1),
        ("tag", 1),
        ("a-b", 1),
        ("«word»", 1),  # string.punctuation is ASCII only
        ("x", 1),
    ]
    assert reference_top(text, 20) == expected
    assert count_file(tmp_path, text.encode(), "--top", "20") == report(expected)


def test_undecodable_bytes_are_replaced(tmp_path: Path) -> None:
    data = b"caf\xe9 caf\xe9 ok \xff\xfe truncated\xe2\x82"
    expected = [("caf\ufffd", 2), ("ok", 1), ("\ufffd\ufffd", 1), ("truncated\ufffd", 1)]
    assert reference_top(data.decode("utf-8", errors="replace"), 10) == expected
    assert count_file(tmp_path, data, "--top", "10") == report(expected)


@pytest.mark.parametrize("data", [b"", b" \n\t\r\n  ", b"... !!! -- ?"], ids=repr)
def test_file_without_words(tmp_path: Path, data: bytes) -> None:
    assert count_file(tmp_path, data, "--top", "5") == report([])


def boundary_torture_text() -> bytes:
    """Text with many tokens, multibyte and invalid sequences, unusual whitespace."""
    pieces = [
        "plain words, and «quoted» ones! ",
        "café naïve Straße über ÉTÉ été ",
        "€uro 😀smile😀 😀 日本語 テキスト ",
        "wide\u3000space nbsp\u00a0joined nel\u0085here sep\x1cfile\x1fend em\u2003dash ",
        "Mixed MIXED mixed mIxEd. ",
        "x" * 300 + " ",  # a token much longer than the small chunk sizes
        "(((((parens))))) 'single' \"double\" ",
    ]
    text = "".join(pieces[i % len(pieces)] + ("\n" if i % 3 else "") for i in range(300))
    return text.encode() + b"bad\xe2\x82 bytes\xf0\x9f here\xff and an unterminated \xe2\x82"


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5, 7, 64, 1021])
def test_result_does_not_depend_on_chunk_boundaries(tmp_path: Path, chunk_size: int) -> None:
    data = boundary_torture_text()
    assert len(data) > 10 * chunk_size
    expected = reference_top(data.decode("utf-8", errors="replace"), 1000)
    env = {"TOPWORDS_CHUNK_SIZE": str(chunk_size)}
    assert count_file(tmp_path, data, "--top", "1000", env=env) == report(expected)


def test_chunk_size_variable_is_validated(tmp_path: Path) -> None:
    """The variable is read: otherwise the chunk boundary tests would prove nothing."""
    (tmp_path / "input.txt").write_text("word\n", encoding="utf-8")
    result = run_topwords(tmp_path, "input.txt", "--top", "1", env={"TOPWORDS_CHUNK_SIZE": "0"})
    assert result.returncode == 2
    assert result.stderr.startswith("topwords: TOPWORDS_CHUNK_SIZE: ")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("chunk_size", [1, 5, 64])
def test_ignore_case_does_not_depend_on_chunk_boundaries(tmp_path: Path, chunk_size: int) -> None:
    data = boundary_torture_text()
    expected = reference_top(data.decode("utf-8", errors="replace"), 1000, ignore_case=True)
    env = {"TOPWORDS_CHUNK_SIZE": str(chunk_size)}
    output = count_file(tmp_path, data, "--top", "1000", "--ignore-case", env=env)
    assert output == report(expected)


def test_large_single_line_file(tmp_path: Path) -> None:
    """A file without newlines, several times the default 1 MiB chunk, with a token over 1 MiB."""
    words = ["alpha", "beta,", "Gamma", "delta!", "ÉPSILON", "zêta", "eta."]
    body = " ".join(words[i * i % len(words)] for i in range(400_000))
    text = body + " " + "y" * (1 << 20) + "z " + body
    data = text.encode()
    assert b"\n" not in data
    assert len(data) > 3 << 20
    expected = reference_top(text, 100)
    assert ("y" * (1 << 20) + "z", 1) in expected
    assert count_file(tmp_path, data, "--top", "100") == report(expected)


@pytest.mark.parametrize(
    ("environment", "footer"),
    [
        (
            {
                "AZ_BATCH_NODE_ID": "node-1",
                "AZ_BATCH_TASK_ID": "task-2",
                "AZ_BATCH_JOB_ID": "job-3",
                "AZ_BATCH_POOL_ID": "pool-4",
            },
            ["Node:\tnode-1", "Task:\ttask-2", "Job:\tjob-3", "Pool:\tpool-4"],
        ),
        (
            {"AZ_BATCH_POOL_ID": "pool-4", "AZ_BATCH_TASK_ID": "task-2", "AZ_BATCH_JOB_ID": ""},
            ["Task:\ttask-2", "Job:\t", "Pool:\tpool-4"],
        ),
        ({}, []),
    ],
    ids=["all", "some, one empty", "none"],
)
def test_footer_lists_the_batch_variables_that_are_set(
    tmp_path: Path, environment: dict[str, str], footer: list[str]
) -> None:
    output = count_file(tmp_path, b"word", "--top", "1", env=environment)
    assert output == report([("word", 1)], footer)


def test_missing_file_is_a_one_line_error(tmp_path: Path) -> None:
    result = run_topwords(tmp_path, "missing.txt", "--top", "3")
    assert result.returncode == 2
    assert result.stderr.startswith("topwords: cannot read missing.txt: ")
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("top", ["0", "-3", "two"])
def test_top_must_be_a_positive_integer(tmp_path: Path, top: str) -> None:
    (tmp_path / "input.txt").write_text("word\n", encoding="utf-8")
    result = run_topwords(tmp_path, "input.txt", "--top", top)
    assert result.returncode == 2
    assert "--top" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "input_OUTPUT.txt").exists()
