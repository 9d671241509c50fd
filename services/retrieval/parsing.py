"""Documents sent as bytes: their text, cut into sections that say where it came from.

One parser per media type (IANA names; parameters after ";" are read for `charset` alone):

* application/pdf: pypdf, the text layer page by page; a section per page with text, its
  number (1-based, as a viewer's "go to page" counts) in `page`. An encrypted PDF is read
  when it opens without a password (permissions only); a PDF with no text on any page (a
  scan) is refused: there is nothing to index until it is OCR'd.
* application/vnd.openxmlformats-officedocument.wordprocessingml.document (DOCX):
  python-docx, paragraphs and tables in order; a heading is a paragraph whose style is a
  "Heading N" (or based on one). A DOCX is a zip: its parts are inflated here, each and all
  together bounded by MAX_INFLATED_BYTES, before python-docx sees them (a zip bomb, or a zip
  whose headers understate its parts, is refused, never inflated).
* text/html: lxml's HTML parser (libxml2: fast, and lenient with the broken markup of real
  pages); visible text, scripts and styles dropped, <h1>-<h6> as headings.
* text/markdown: markdown-it-py (CommonMark) finds the ATX and setext headings, never a "#"
  inside code; a section is the document's own source from one heading to the next.
* text/plain: one section.

A heading section holds its heading path in `heading`, outermost first, joined by
HEADING_SEPARATOR, and starts with the heading's own text. `parse` raises Unreadable, whose
message says why in words a user can act on, for anything it cannot read.
"""

from __future__ import annotations

import codecs
import io
import itertools
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass

import docx
import lxml.etree
import lxml.html
import pypdf
from docx.table import Table
from docx.text.paragraph import Paragraph
from markdown_it import MarkdownIt

PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
HTML = "text/html"
MARKDOWN = "text/markdown"
TEXT = "text/plain"
HEADING_SEPARATOR = " > "
# A heading path and a title found in the content are cut to these many characters.
MAX_HEADING_CHARS = 256
MAX_TITLE_CHARS = 256
# A DOCX's parts, inflated, all together: python-docx holds every part in memory. Far more
# text than a document may store (its chunks must fit one corpus log entry).
MAX_INFLATED_BYTES = 64 * 1024 * 1024
MAX_PARTS = 10_000
_READ = 1024 * 1024  # bytes of a part inflated at a time
_CHARSET = re.compile(r";\s*charset\s*=\s*\"?([^\";\s]+)\"?", re.IGNORECASE)
_DOCX_HEADING = re.compile(r"^Heading ([1-9])$")
_HTML_HEADINGS = {f"h{n}": n for n in range(1, 7)}
_HTML_SKIPPED = frozenset({"head", "script", "style", "noscript", "template", "svg", "math"})
# Elements that end a line of text: the chunker sees their text as blocks of its own.
_HTML_BLOCKS = frozenset(
    {
        *("address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt"),
        *("figcaption", "figure", "footer", "form", "header", "hr", "li", "main", "nav"),
        *("ol", "p", "pre", "section", "table", "td", "th", "tr", "ul"),
    }
)


class Unreadable(ValueError):
    """A document whose text cannot be read; the message says why ("is empty"), `field`
    names the Document field at fault: "content", or "media_type" for one not supported."""

    def __init__(self, message: str, field: str = "content") -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Section:
    """A run of a document's text and where it is: `page` (1-based) in a PDF, 0 elsewhere;
    `heading` the path of headings above it, "" where none is."""

    text: str
    page: int = 0
    heading: str = ""


@dataclass(frozen=True)
class Parsed:
    """A document's sections in order, and the title its content names ("" for none)."""

    title: str
    sections: list[Section]


def parse(content: bytes, media_type: str) -> Parsed:
    """`content` as `media_type` names it (its essence compared without case).

    Raises Unreadable for an unsupported media type, an unknown charset, and content the
    parser cannot read: corrupt, encrypted with a password, over MAX_INFLATED_BYTES
    inflated, or without any text.
    """
    if not content.strip():
        raise Unreadable("is empty")
    essence = media_type.split(";", 1)[0].strip().lower()
    parser = _PARSERS.get(essence)
    if parser is None:
        raise Unreadable(f"{media_type[:100]!r} is not one of {', '.join(SUPPORTED)}", "media_type")
    match = _CHARSET.search(media_type)
    charset = match.group(1) if match else ""
    try:
        codecs.lookup(charset or "utf-8")
    except LookupError as exc:
        raise Unreadable(f"names an unknown charset ({exc})", "media_type") from exc
    try:
        parsed = parser(content, charset)
    except Unreadable:
        raise
    except Exception as exc:  # a parser's failure on bytes it cannot read, whatever its kind
        why = f"{type(exc).__name__}: {exc}"[:200]
        raise Unreadable(f"cannot be read as {essence} ({why})") from exc
    sections = [s for s in parsed.sections if s.text.strip()]
    if not sections:
        raise Unreadable(f"holds no text ({essence})")
    return Parsed(_one_line(parsed.title, MAX_TITLE_CHARS), sections)


def _one_line(text: str, limit: int) -> str:
    return " ".join(text.split())[:limit]


class _Outline:
    """The heading path as a document's headings go by, and the sections under them."""

    def __init__(self) -> None:
        self.sections: list[Section] = []
        self._path: list[tuple[int, str]] = []
        self._parts: list[str] = []

    def heading(self, level: int, name: str) -> None:
        """A heading of `level` (1 outermost): the section before it ends, its own starts."""
        self.end()
        self._path = [*(p for p in self._path if p[0] < level), (level, " ".join(name.split()))]

    def text(self, text: str) -> None:
        self._parts.append(text)

    def end(self) -> None:
        path = HEADING_SEPARATOR.join(text for _, text in self._path)
        self.sections.append(Section("".join(self._parts), heading=path[:MAX_HEADING_CHARS]))
        self._parts = []


def _pdf(content: bytes, charset: str) -> Parsed:
    reader = pypdf.PdfReader(io.BytesIO(content))
    if reader.is_encrypted and reader.decrypt("") == pypdf.PasswordType.NOT_DECRYPTED:
        raise Unreadable("is an encrypted PDF that needs a password to open")
    sections = [Section(page.extract_text(), page=n) for n, page in enumerate(reader.pages, 1)]
    if not any(s.text.strip() for s in sections):
        raise Unreadable(
            f"is a PDF without a text layer on any of its {len(sections)} pages (a scan?): "
            "nothing to index until it is OCR'd"
        )
    title = reader.metadata.title if reader.metadata is not None else None
    return Parsed(title or "", sections)


def _inflated(content: bytes) -> bytes:
    """The zip `content` with its parts inflated and stored uncompressed, for python-docx.

    zipfile yields no more of a part than its header declares (a part that inflates to
    more then fails its CRC check), so the declared sizes, checked first, bound what is
    inflated. Parts are read a megabyte at a time: one read of a whole part may inflate up
    to a gigabyte before zipfile cuts it to size. Only Word's compressions are taken
    (stored, deflated): zipfile inflates bzip2 and LZMA without a bound.
    """
    with zipfile.ZipFile(io.BytesIO(content)) as source:
        parts = source.infolist()
        declared = sum(p.file_size for p in parts)
        if len(parts) > MAX_PARTS or declared > MAX_INFLATED_BYTES:
            raise Unreadable(
                f"unpacks to {declared:,} bytes in {len(parts):,} parts, over the limit of "
                f"{MAX_INFLATED_BYTES:,} bytes in {MAX_PARTS:,} parts (a zip bomb?)"
            )
        if any(p.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) for p in parts):
            raise Unreadable("is a zip compressed as no DOCX is (bzip2 or LZMA)")
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as stored:
            for part in parts:
                with source.open(part) as member:
                    data = b"".join(iter(lambda: member.read(_READ), b""))
                stored.writestr(part.filename, data)
    return out.getvalue()


def _docx_level(paragraph: Paragraph) -> int:
    """The heading level of a paragraph whose style is (or is based on) "Heading N"; 0."""
    style = paragraph.style
    while style is not None:
        match = _DOCX_HEADING.match(style.name or "")
        if match:
            return int(match.group(1))
        style = style.base_style
    return 0


def _docx(content: bytes, charset: str) -> Parsed:
    document = docx.Document(io.BytesIO(_inflated(content)))
    outline = _Outline()
    for block in document.iter_inner_content():
        if isinstance(block, Table):
            for row in block.rows:
                outline.text(" | ".join(cell.text for cell in row.cells) + "\n\n")
        else:
            if level := _docx_level(block):
                outline.heading(level, block.text)
            outline.text(block.text + "\n\n")
    outline.end()
    return Parsed(document.core_properties.title or "", outline.sections)


def _html_utf8(content: bytes, charset: str) -> tuple[bytes, str | None]:
    """The page and its encoding for lxml: UTF-8 where a charset was sent (decoded by
    Python, which knows more names than libxml2: "latin_1", "utf-8-sig") or the bytes are
    UTF-8; else the bytes as they are and None: lxml then reads a <meta charset> (or falls
    back to Latin-1)."""
    if charset:
        return _decoded(content, charset).encode("utf-8"), "utf-8"
    try:
        content.decode("utf-8")
    except UnicodeDecodeError:
        return content, None
    return content, "utf-8"


def _html(content: bytes, charset: str) -> Parsed:
    content, encoding = _html_utf8(content, charset)
    parser = lxml.html.HTMLParser(encoding=encoding)
    root = lxml.html.document_fromstring(content, parser=parser)
    title = root.findtext(".//title") or ""
    outline = _Outline()
    walk = lxml.etree.iterwalk(root, events=("start", "end"))
    for event, element in walk:
        tag = element.tag if isinstance(element.tag, str) else ""  # "": a comment
        if event == "start":
            if tag in _HTML_HEADINGS:
                heading = element.text_content()
                outline.heading(_HTML_HEADINGS[tag], heading)
                outline.text(f"\n\n{heading}\n\n")
                title = title or (heading if tag == "h1" else "")
                walk.skip_subtree()
            elif not tag or tag in _HTML_SKIPPED:
                walk.skip_subtree()
            else:
                outline.text(("\n\n" if tag in _HTML_BLOCKS else "") + (element.text or ""))
        else:
            outline.text(("\n\n" if tag in _HTML_BLOCKS else "") + (element.tail or ""))
    outline.end()
    return Parsed(title, outline.sections)


def _decoded(content: bytes, charset: str) -> str:
    """Text in `charset` (UTF-8 without one, a byte order mark dropped); Unreadable where
    its bytes are not."""
    name = charset or "utf-8-sig"
    try:
        return content.decode(name)
    except UnicodeDecodeError as exc:
        raise Unreadable(
            f"is not {charset or 'UTF-8'} text (byte {exc.start:,}): send its charset, "
            "e.g. 'text/plain; charset=windows-1252'"
        ) from exc


def _markdown(content: bytes, charset: str) -> Parsed:
    # Lines as markdown-it numbers them: \r\n and \r made \n, and no other break (str's
    # splitlines would also break at \f, \v, \x85 or \u2028 and shift every section).
    text = re.sub(r"\r\n?", "\n", _decoded(content, charset))
    lines = re.findall(r"[^\n]*\n|[^\n]+$", text)
    tokens = MarkdownIt("commonmark").parse(text)
    outline = _Outline()
    title = ""
    start = 0
    for token, inline in itertools.pairwise(tokens):
        if token.type != "heading_open" or token.map is None:
            continue
        outline.text("".join(lines[start : token.map[0]]))
        start = token.map[0]
        heading = "".join(c.content for c in inline.children or ())
        outline.heading(int(token.tag[1:]), heading)
        title = title or (heading if token.tag == "h1" else "")
    outline.text("".join(lines[start:]))
    outline.end()
    return Parsed(title, outline.sections)


def _text(content: bytes, charset: str) -> Parsed:
    return Parsed("", [Section(_decoded(content, charset))])


_PARSERS: dict[str, Callable[[bytes, str], Parsed]] = {
    PDF: _pdf,
    DOCX: _docx,
    HTML: _html,
    MARKDOWN: _markdown,
    TEXT: _text,
}
SUPPORTED = tuple(_PARSERS)
