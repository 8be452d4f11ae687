from schemas.text import cut, quote


def test_short_text_is_kept_whole() -> None:
    assert cut("GET") == "GET"
    assert quote("GET") == "'GET'"


def test_long_text_is_cut_and_says_its_length() -> None:
    text = "x" * 5_000_000
    cut_text = cut(text, 200)
    assert cut_text.startswith("x" * 200) and len(cut_text) < 260
    assert "5000000 characters" in cut_text
    assert len(quote(text)) < 260


def test_non_strings_are_quoted_by_repr_and_cut() -> None:
    assert quote(12) == "12"
    assert len(quote(list(range(100_000)), 50)) < 100
