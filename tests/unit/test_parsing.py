"""Documents sent as files (services/retrieval/parsing.py): a PDF's pages and a DOCX's
headings in files LibreOffice wrote (tests/conftest.py's office_files), HTML and Markdown
headings, and each kind of file that cannot be read, refused with a reason a user can act
on. The real mesh's round trip is tests/integration/test_documents.py's."""

from __future__ import annotations

import io
import zipfile

import pypdf
import pytest
from PIL import Image, ImageDraw

from services.contract.documents import Document
from services.retrieval import parsing
from services.retrieval.core import MAX_ENTRY_BYTES, _sections
from services.retrieval.parsing import DOCX, HTML, MARKDOWN, PDF, TEXT, Unreadable, parse


@pytest.fixture(scope="module")
def pdf(office_files) -> bytes:
    return (office_files / "lighthouses.pdf").read_bytes()


@pytest.fixture(scope="module")
def docx(office_files) -> bytes:
    return (office_files / "baking.docx").read_bytes()


def _refused(content: bytes, media_type: str) -> Unreadable:
    with pytest.raises(Unreadable) as err:
        parse(content, media_type)
    return err.value


def test_a_pdf_is_read_page_by_page_with_its_title(pdf):
    parsed = parse(pdf, PDF)
    assert parsed.title == "A short history of lighthouses"
    assert [s.page for s in parsed.sections] == [1, 2, 3]
    assert parsed.sections[0].text.startswith("Early lights")
    assert "Augustin-Jean Fresnel" in parsed.sections[1].text
    assert "Fresnel" not in parsed.sections[0].text + parsed.sections[2].text
    assert {s.heading for s in parsed.sections} == {""}


def test_a_docx_is_read_under_its_headings_tables_included(docx):
    parsed = parse(docx, DOCX)
    assert parsed.title == "Bread baking handbook"
    assert [(s.heading, s.page) for s in parsed.sections] == [
        ("Sourdough", 0),
        ("Sourdough > Feeding the starter", 0),
        ("Sourdough > Baking times", 0),
        ("Flatbreads", 0),
    ]
    starter, times = parsed.sections[1].text, parsed.sections[2].text
    assert starter.startswith("Feeding the starter\n") and "every twelve hours" in starter
    assert "Rye tin loaf | 220 C | 70" in times


def test_html_keeps_visible_text_under_its_headings():
    page = (
        b"<html><head><title>Tea</title><style>p{color:red}</style></head><body>"
        b"<p>Intro.</p><h2>Green</h2><p>Brew at 80 C.<script>alert(1)</script></p>"
        b"<!-- a comment --><h3>Storing</h3><ul><li>Dark</li><li>Dry</li></ul>"
        b"<h2>Black</h2><p>Brew at 100 C.</p></body></html>"
    )
    parsed = parse(page, "text/html; charset=utf-8")
    assert parsed.title == "Tea"
    found = [(s.heading, " ".join(s.text.split())) for s in parsed.sections]
    assert found == [
        ("", "Intro."),
        ("Green", "Green Brew at 80 C."),
        ("Green > Storing", "Storing Dark Dry"),
        ("Black", "Black Brew at 100 C."),
    ]


@pytest.mark.parametrize(
    ("content", "media_type"),
    [
        ("<p>café</p>".encode(), HTML),  # UTF-8 without a word of it
        ("<meta charset='windows-1252'><p>café</p>".encode("cp1252"), HTML),
        ("<p>café</p>".encode("cp1252"), "text/html; charset=windows-1252"),
        ("<p>café</p>".encode("latin-1"), "text/html; charset=latin_1"),  # Python's name
        ("\ufeff<p>café</p>".encode(), "text/html; charset=utf-8-sig"),
        ("café".encode("cp1252"), "text/plain; charset=windows-1252"),
        ("\ufeffcafé".encode(), TEXT),
    ],
)
def test_text_is_decoded_by_its_charset(content, media_type):
    assert "café" in parse(content, media_type).sections[0].text


def test_markdown_headings_are_commonmarks_and_sections_keep_the_source():
    source = (
        "Preface.\n\n# Guide *one*\n\nIntro.\n\n```\n# a comment, not a heading\n```\n\n"
        "Setext\n------\n\n    # indented code\n\n## `code` head\nText.\n"
    )
    parsed = parse(source.encode(), MARKDOWN)
    assert parsed.title == "Guide one"
    assert [s.heading for s in parsed.sections] == [
        "",
        "Guide one",
        "Guide one > Setext",
        "Guide one > code head",
    ]
    assert "".join(s.text for s in parsed.sections) == source


def test_markdown_sections_start_at_their_headings_whatever_breaks_the_lines_before():
    """Lines as markdown-it counts them: a form feed or a line separator breaks none, and a
    CR LF is one break."""
    source = "intro\fpage two\u2028still\r\n# A\r\nalpha\n# B\nbeta\n"
    parsed = parse(source.encode(), MARKDOWN)
    assert [(s.heading, s.text) for s in parsed.sections] == [
        ("", "intro\fpage two\u2028still\n"),
        ("A", "# A\nalpha\n"),
        ("B", "# B\nbeta\n"),
    ]


def test_an_encrypted_pdf_needs_its_password_unless_it_opens_without_one(pdf):
    def encrypted(user_password: str) -> bytes:
        writer = pypdf.PdfWriter(clone_from=io.BytesIO(pdf))
        writer.encrypt(user_password=user_password, owner_password="owner", algorithm="AES-256")
        out = io.BytesIO()
        writer.write(out)
        return out.getvalue()

    assert "needs a password" in str(_refused(encrypted("secret"), PDF))
    assert [s.page for s in parse(encrypted(""), PDF).sections] == [1, 2, 3]  # permissions only


def test_a_scan_without_a_text_layer_is_refused():
    scan = Image.new("L", (850, 1100), 255)
    ImageDraw.Draw(scan).text((100, 100), "A page of text, as pixels only.", fill=0)
    content = io.BytesIO()
    scan.save(content, format="PDF", resolution=100)  # Pillow's PDF: one image a page
    error = _refused(content.getvalue(), PDF)
    assert "without a text layer" in str(error) and error.field == "content"


@pytest.mark.parametrize("cut", [0.5, 0.99])
def test_a_cut_pdf_or_docx_is_refused(pdf, docx, cut):
    for content, media_type in ((pdf, PDF), (docx, DOCX)):
        error = _refused(content[: int(len(content) * cut)], media_type)
        assert str(error).startswith(f"cannot be read as {media_type}")


def _zip(parts: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in parts.items():
            archive.writestr(name, data)
    return out.getvalue()


def test_a_zip_bomb_is_refused_before_it_is_inflated():
    bomb = _zip({"word/document.xml": bytes(parsing.MAX_INFLATED_BYTES + 1)})
    assert len(bomb) < 200_000
    assert "unpacks to" in str(_refused(bomb, DOCX))


def test_a_zip_that_understates_its_parts_is_refused_without_inflating_them():
    """Headers that say 100 bytes of a part that inflates to more than the limit: zipfile
    stops at 100, and the part fails its CRC check."""
    lying = bytearray(_zip({"word/document.xml": bytes(parsing.MAX_INFLATED_BYTES + 1)}))
    central = lying.rindex(b"PK\x01\x02")
    for size_at in (22, central + 24):  # the local header's, then the central directory's
        lying[size_at : size_at + 4] = (100).to_bytes(4, "little")
    assert "BadZipFile: Bad CRC-32" in str(_refused(bytes(lying), DOCX))


@pytest.mark.parametrize(
    ("content", "media_type", "field", "why"),
    [
        (b"GIF89a", "image/gif", "media_type", "is not one of"),
        (b"x", "text/plain; charset=no-such-charset", "media_type", "unknown charset"),
        ("café".encode("cp1252"), TEXT, "content", "is not UTF-8 text (byte 3)"),
        (b"  \n", TEXT, "content", "is empty"),
        (b"<html><script>x()</script></html>", HTML, "content", "holds no text"),
    ],
)
def test_what_cannot_be_read_names_the_field_and_why(content, media_type, field, why):
    error = _refused(content, media_type)
    assert (error.field, why in str(error)) == (field, True), str(error)


def test_text_that_no_write_could_hold_is_refused_before_it_is_chunked():
    """Plain text within the content limit, but over a write entry once parsed."""
    big = Document("big", "", "", content=b"word " * (MAX_ENTRY_BYTES // 5 + 1), media_type=TEXT)
    with pytest.raises(Unreadable, match=r"bytes of text, over a write's") as refused:
        _sections(big)
    assert refused.value.field == "content"


def test_content_without_a_title_of_its_own_is_titled_by_its_id():
    untitled = Document("notes-2026", "", "", content=b"# \n\nJust text.", media_type=MARKDOWN)
    assert _sections(untitled)[0] == "notes-2026"
    titled = Document("notes-2026", "", "", content=b"# Notes\n\nText.", media_type=MARKDOWN)
    assert _sections(titled)[0] == "Notes"
    assert (
        _sections(Document("x", "Given", "", content=b"# Notes", media_type=MARKDOWN))[0] == "Given"
    )
