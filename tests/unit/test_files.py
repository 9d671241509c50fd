from services.client.files import document_id, find_files, read_document


def test_html_text_and_title(tmp_path):
    page = tmp_path / "My Page.html"
    page.write_text(
        "<html><head><title>Hello</title><style>p{}</style></head>"
        "<body><p>First para.</p><script>alert(1)</script><p>Second.</p></body></html>"
    )
    document = read_document(page)
    assert document.id == "My-Page"
    assert document.title == "Hello"
    assert "First para." in document.text and "Second." in document.text
    assert "alert" not in document.text and "p{}" not in document.text


def test_markdown_title_and_folder_walk(tmp_path):
    (tmp_path / "a.md").write_text("# Title A\n\nbody")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("plain")
    (tmp_path / "c.bin").write_bytes(b"\0")
    files = list(find_files([tmp_path]))
    assert [f.name for f in files] == ["a.md", "b.txt"]
    assert read_document(files[0]).title == "Title A"
    assert document_id(tmp_path / "weird name (1).txt") == "weird-name-1"
