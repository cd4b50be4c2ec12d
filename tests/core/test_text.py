"""The text helpers: what an upstream or a user said, folded to one line, its secrets removed, and
made inert Markdown, so that a chat UI shows it as the text it is; durations said as people say
them; keys masked in logs."""

from __future__ import annotations

import pytest

from core.text import markdown_safe, mask_key, md, md_url, one_line, redact, redact_secrets, seconds, upstream_text
from tests.helpers import rendered


def test_one_line_folds_white_space_and_cuts_with_an_ellipsis_at_the_limit():
    assert one_line("  a cat\n\n on\tthe   mat ", 100) == "a cat on the mat"
    assert one_line("abcdefghij", 10) == "abcdefghij"
    cut = one_line("abcdefghijk", 10)
    assert cut == "abcdefghi…" and len(cut) == 10


@pytest.mark.parametrize(
    "text",
    [
        "your key sk-abcdef0123456789 is invalid",
        "Bearer eyJhbGciOiJIUzI1NiJ9",
        "api_key=abcd1234efgh",
        "token: 1|AbCdEfGhIjKlMnOp rejected",
        "signature A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8 expired",
    ],
)
def test_redact_removes_anything_shaped_like_a_key_or_token(text):
    said = redact(text)
    assert "***" in said
    assert not any(secret in said for secret in ("sk-abcdef", "eyJhbG", "abcd1234", "AbCdEfGh", "A1b2C3d4"))


def test_an_authorization_header_echoed_whole_loses_its_token():
    assert "eyJhbGciOiJIUzI1NiJ9" not in redact("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9")


def test_redact_removes_the_secrets_it_is_given_and_leaves_plain_words():
    assert redact("the operator's password hunter22 was used", ["hunter22"]) == "the operator's password *** was used"
    assert redact("Model does not exist. Please check it carefully.") == "Model does not exist. Please check it carefully."
    assert redact("a cat at the sea", ["a", "at", ""]) == "a cat at the sea"  # too short to be a secret: words stay


def test_redact_secrets_keeps_prose_whole_but_not_keys():
    word = "supercalifragilisticexpialidociouslylongword"
    prose = f"A watercolor of a cat, {word}, sk-live0123456789 Bearer abcdefghijkl"
    assert redact_secrets(prose, ["watercolor"]) == f"A *** of a cat, {word}, *** ***"
    assert "supercalifragilistic" not in redact(prose)  # redact would take the long word for a token


def test_upstream_text_is_one_short_line_without_secrets():
    said = upstream_text("Invalid key sk-abcdef0123456789\n\n" + "x " * 500, limit=40)
    assert len(said) == 40 and said.endswith("…") and "\n" not in said and "sk-abcdef" not in said
    assert upstream_text("quota exceeded for the operator-secret", secrets=["operator-secret"]) == "quota exceeded for the ***"


@pytest.mark.parametrize(
    "value, said",
    [(0.0, "0.1"), (0.04, "0.1"), (0.5, "0.5"), (0.94, "0.9"), (0.95, "1"), (1.4, "1"), (4.99857, "5"), (61.5, "62")],
)
def test_seconds_are_said_whole_or_in_tenths_below_one(value, said):
    assert seconds(value) == said


HOSTILE = (
    "![x](http://evil.example/a.png) [click](http://evil.example/) <img src=x onerror=alert(1)> "
    "<https://evil.example/> http://evil.example/path www.evil.example //evil.example mail@evil.example \\[x\\]"
)


def test_md_makes_any_text_render_as_itself_never_an_image_a_link_or_html():
    assert rendered(md(HOSTILE)) == {"images": [], "links": [], "html": []}
    assert md("一只可爱的猫咪, 9:16") == "一只可爱的猫咪, 9:16"  # ordinary text is left as it is


def test_markdown_safe_text_stays_inside_an_images_alt_text():
    alt = markdown_safe("a cat](http://evil.example/x.png) ![y](http://evil.example/y.png)\n|second line")
    found = rendered(f"![{alt}](https://img.example.com/a.png)")
    assert found == {"images": ["https://img.example.com/a.png"], "links": [], "html": []}
    assert "\n" not in alt and len(markdown_safe("猫" * 500, limit=50)) == 50


def test_md_url_cannot_end_the_link_early_or_smuggle_a_title():
    url = 'https://img.example.com/a b.png) ![y](http://evil.example/y.png "title") <b>'
    found = rendered(f"![x]({md_url(url)})")
    assert len(found["images"]) == 1 and found["images"][0].startswith("https://img.example.com/a%20b.png")
    assert found["links"] == found["html"] == [] and "evil" in found["images"][0]  # all of it one address
    plain = "https://img.example.com/p/a.png?x=1&y=2#f"
    assert md_url(plain) == plain


@pytest.mark.parametrize(
    "key, shown",
    [
        ("sk-abcdefghijklmnopqrstuvwxyz", "sk-ab…wxyz"),
        ("sk-good-aaaa1111", "…1111"),
        ("sk-short", "…"),
    ],
)
def test_a_masked_key_tells_keys_apart_and_shows_no_more_than_a_third(key, shown):
    assert mask_key(key) == shown
    assert len(shown.replace("…", "")) <= len(key) / 3
