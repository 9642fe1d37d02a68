"""Chunking against METHOD.md 2.3/2.4: crafted texts for each rule, real books for the whole path."""
import json
import os

import pytest

from coser.errors import InputError
from data_construction import chunking as C

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(REPO_ROOT, "..", "shared", "coser-data")


def shared(*parts):
    path = os.path.join(SHARED, *parts)
    if not os.path.exists(path):
        pytest.skip(f"shared CoSER data not present: {os.path.normpath(path)}")
    return path


@pytest.fixture(scope="module")
def books():
    with open(shared("src", "books_example.jsonl"), encoding="utf-8") as f:
        return {b["title"]: b for b in map(json.loads, f)}


def alternatives(text):
    """(alternative number 1..5, matched text) for every heading match."""
    return [(m.lastindex, m.group(0)) for m in C.HEADING_RE.finditer(text)]


# ---- titles and tabs ----------------------------------------------------------------------
def test_title_replacements_in_reference_order():
    assert C.sanitize_title("A/B: c.d") == "A-B_ c d"
    assert C.sanitize_title("Mr. Smith") == "Mr  Smith"
    assert C.sanitize_title("../../etc/passwd") == "  -  -etc-passwd"


def test_title_made_safe():
    assert "\\" not in C.sanitize_title("a\\b")
    assert C.sanitize_title("a\nb\x00c") == "a b c"
    long = C.sanitize_title("é" * 500)
    assert len(long.encode()) <= C.MAX_TITLE_BYTES and set(long) == {"é"}
    with pytest.raises(ValueError):
        C.sanitize_title("...")
    with pytest.raises(ValueError):
        C.sanitize_title("")


def test_tab_cleanup_threshold_is_strict():
    at = "\t" + "a" * 19          # exactly 5%: kept
    assert C.clean_tabs(at) == at
    over = "\t" + "a" * 18        # above 5%: every tab removed, not replaced by a space
    assert C.clean_tabs(over + "\tb") == "a" * 18 + "b"


# ---- heading patterns -------------------------------------------------------------------
def test_a1_keyword_number_alone():
    assert alternatives("x\nChapter 12.\n\n\nBody") == [(1, "\nChapter 12.\n\n\n")]
    assert alternatives("x\n  ### CHAPTER XIV\nBody")[0][0] == 1
    assert alternatives("x\nPART\n\n2\nBody") == [(1, "\nPART\n\n2\n")]      # number on a later line
    assert alternatives("x\nBook Twelve\nBody")[0][0] == 1
    assert alternatives("x\nchapter mild\nBody")[0][0] == 1                # Roman letter set, not numerals
    assert alternatives("x\n## 3\nBody")[0][0] == 1                        # hash run instead of keyword
    assert alternatives("x\nChapter\u00a01.\nBody")[0][0] == 1             # Pride and Prejudice headings


def test_a1_rejects_text_after_number_then_a2_takes_short_lines():
    assert alternatives("x\nChapter 1: The Start\nBody") == [(2, "\nChapter 1: The Start\n")]
    # Book is not in the A2 keywords
    assert alternatives("x\nBook 1: The Start\nBody") == []


def test_a2_details():
    assert alternatives("x\nParting words\nBody") == []
    assert alternatives("x\nChapter1\nBody") == []
    assert alternatives("x\npart of it was true.\nBody") == [(2, "\npart of it was true.\n")]
    # Over 40 characters from the keyword to the line end: no match.
    assert alternatives("x\npart of it was true, and so much more was true.\nBody") == []
    # A bare keyword line swallows the whole next non-blank line, of any length.
    long_line = "A long paragraph " * 20
    assert alternatives(f"x\nPROLOGUE\n\n{long_line}\nNext\n") == [(2, f"\nPROLOGUE\n\n{long_line}\n")]


def test_a3_number_words():
    assert alternatives("x\nTwenty One\n\nBody") == [(3, "\nTwenty One\n\n")]
    assert alternatives("x\nTWENTY\nONE\nBody") == [(3, "\nTWENTY\nONE\n")]
    assert alternatives("x\nTwenty-One\nBody") == []
    assert alternatives("x\nOne thing\nBody") == []
    assert alternatives("x\nseventeen\nBody")[0][0] == 3


def test_a4_roman_then_digits_needs_two_adjacent_newlines():
    assert alternatives("x\nIV\n\n12\nBody") == [(4, "\nIV\n\n12\n")]
    assert alternatives("x\nIV\n12\nBody") == []
    assert alternatives("x\nIV\n \n12\nBody") == []
    assert alternatives("x\nIV\nBody") == []                # no stand-alone Roman line pattern
    assert alternatives("x\n12\nBody") == []                # no stand-alone digits line pattern


def test_a5_long_padded_chapter_line():
    line = "Chapter 7" + " " * 60
    assert alternatives(f"x\n{line}\nBody") == [(5, f"\n{line}\n")]


def test_scanning_rules():
    assert alternatives("Chapter 1\nBody") == []            # the first line can never be a heading
    # A heading right after a match has no newline left to start its own.
    assert [a for a, _ in alternatives("x\nBOOK I\n\nCHAPTER 1\nBody")] == [1]
    # A match starts at the first newline of the blank run before it.
    assert alternatives("x.\n\n\nChapter 2\nBody")[0][1].startswith("\n\n\n")


# ---- splits, merging, acceptance ---------------------------------------------------------
def test_splits_start_with_their_heading_and_lose_nothing_but_whitespace():
    text = "Preamble\n\nChapter 1\n\nOne body.\n\nChapter 2\n\nTwo body.\n"
    splits = C.find_splits(text)
    assert [s.title for s in splits] == [None, "Chapter 1", "Chapter 2"]
    assert [s.content for s in splits] == ["Preamble", "Chapter 1\n\nOne body.", "Chapter 2\n\nTwo body."]


def test_merge_threshold_2000_chars_and_empty_first_split():
    splits = [C.Chapter(None, ""), C.Chapter("A", "a" * 1500), C.Chapter("B", "b" * 499), C.Chapter("C", "c" * 10)]
    merged = C.merge_splits(splits)
    assert merged[0].title == "A" and merged[0].content == "a" * 1500 + "\n" + "b" * 499   # exactly 2000
    assert merged[1].title == "C" and merged[1].content == "c" * 10


def test_acceptance_needs_six_merged_chapters():
    body = "word " * 450
    five = "".join(f"\nChapter {i}\n\n{body}" for i in range(1, 6))
    six = "".join(f"\nChapter {i}\n\n{body}" for i in range(1, 7))
    assert C.split_book("Intro" + five) is None
    assert len(C.split_book("Intro" + six)) == 6


# ---- packing -------------------------------------------------------------------------------
def test_fixed_size_chunks_are_exact():
    text = " ".join(f"w{i}" for i in range(2000))
    toks = C.encode(text)
    chunks = C.fixed_size_chunks(text, 100)
    assert [len(C.encode(c)) for c in chunks[:-1]] == [100] * (len(chunks) - 1)
    assert len(chunks) == -(-len(toks) // 100)
    assert "".join(chunks) == text


def test_packing_half_to_double_no_separator_and_oversize_split():
    small = [C.Chapter("t", "alpha " * 30), C.Chapter("t", "beta " * 30)]    # ~30 tokens each
    assert C.pack_chapters(small, 100) == ["alpha " * 30 + "beta " * 30]  # glued, no separator
    big = C.Chapter("t", " ".join(f"x{i}" for i in range(400)))
    n = len(C.encode(big.content))
    pieces = C.pack_chapters([big], 100)
    sizes = [len(C.encode(p)) for p in pieces]
    assert sizes[:-1] == [100] * (len(pieces) - 1) and 100 < sizes[-1] <= 200
    assert sum(len(C.encode(p)) for p in pieces) in range(n - len(pieces), n + len(pieces))
    leftover = C.pack_chapters([C.Chapter("t", "alpha " * 60), C.Chapter("t", "tiny")], 100)
    assert leftover[-1] == "tiny"


def test_copyright_filter():
    text = "All rights reserved.\nCopyright 2020, all rights reserved\nA story line with rights once.\nBody"
    # "reserved." has punctuation and does not count; line 2 has two exact words.
    assert C.drop_copyright_lines(text) == "All rights reserved.\nA story line with rights once.\nBody"
    long_line = "copyright rights " + "word " * 60
    assert C.drop_copyright_lines(long_line) == long_line


def test_empty_and_special_token_books():
    with pytest.raises(InputError, match="content"):
        C.chunk_book("   \n\t ", 100)
    with pytest.raises(InputError, match="content"):
        C.chunk_book("", 100)
    plan = C.chunk_book("Before <|endoftext|> after. " * 50, 64)
    assert "".join(plan.chunks).count("<|endoftext|>") == 50


# ---- real books ---------------------------------------------------------------------------
def test_real_plays_match_published_chunk_indices(books):
    """Every published plot's i_chunk is the first chunk holding its text's last 100 characters."""
    for title, n_chunks in (("Othello", 8), ("King Lear", 12)):
        plan = C.chunk_book(books[title]["content"], 8192)
        assert plan.chapters is None and len(plan.chunks) == n_chunks
        with open(shared("extracted", f"{title}.json"), encoding="utf-8") as f:
            extracted = json.load(f)
        for p in extracted["plots"]:
            tail = p["text"][-100:]
            assert next(i for i, c in enumerate(plan.chunks) if tail in c) == p["i_chunk"]


def test_real_book_with_chapters_packs_within_bounds(books):
    content = books["Pride and Prejudice"]["content"]
    plan = C.chunk_book(content, 8192)
    assert len(plan.chapters) == 61 and len(plan.chunks) == 28
    assert "".join(plan.chunks) == "".join(c.content for c in plan.chapters)
    for chunk in plan.chunks[:-1]:
        assert 4096 - 50 <= C.count_tokens(chunk) <= 2 * 8192 + 50
    # Each merged chapter is at least 2000 characters except possibly the last.
    assert all(len(c.content) >= 2000 for c in plan.chapters[:-1])


def test_fixed_size_path_keeps_the_whole_play(books):
    content = books["Othello"]["content"]
    plan = C.chunk_book(content, 1024)
    assert "".join(plan.chunks[1:]) in content
    assert all(C.count_tokens(c) <= 1024 + 2 for c in plan.chunks)


def test_real_book_oversized_chapter_is_sliced_by_the_re_encoding(books):
    """A Tale of Two Cities: most headings carry a subtitle, so one merged chapter is huge."""
    plan = C.chunk_book(books["A Tale of Two Cities"]["content"], 8192)
    sizes = [C.count_tokens(c) for c in plan.chunks]
    assert len(plan.chapters) == 20 and len(plan.chunks) == 27
    # The big chapter: exact 8192-token slices, then one piece of 8192 < n <= 16384 tokens.
    assert sizes[1:22] == [8192] * 21 and 8192 < sizes[22] <= 16384
    assert sizes[0] < 8192          # the copyright filter removed lines from the first chunk only
    glued = "".join(c.content for c in plan.chapters)
    assert glued.endswith("".join(plan.chunks[1:]))
    assert C.drop_copyright_lines(glued[: len(glued) - len("".join(plan.chunks[1:]))]) == plan.chunks[0]
