"""A run's report.md: what it says reads as written, whatever the class names and paths hold."""

from markdown_it import MarkdownIt

from alexnet.evaluation import Evaluation
from alexnet.experiments.report import write_report

NAMES = ["a|b", "<b>bold</b>", "x*y*z", "golden_retriever", "_lead", "a&lt;b", "C:\\dir", "[x](y)", "tab\there"]


def _tables(markdown: str) -> list[list[str]]:
    """Each table row's cells as text, as CommonMark with GitHub's tables renders them (HTML would be tags)."""
    rows, row = [], None
    for token in MarkdownIt("commonmark").enable("table").parse(markdown):
        if token.type == "tr_open":
            row = []
        elif token.type == "tr_close":
            rows.append(row)
            row = None
        elif token.type == "inline" and row is not None:
            row.append("".join(c.content for c in token.children if c.type == "text"))
    return rows


def test_class_names_and_values_read_as_they_are(tmp_path):
    """A class folder named `a|b` split its row into three cells; `x*y*z` turned to emphasis, `<b>bold</b>` to HTML,
    `[x](y)` to a link. Each now reads as its own text, one row each; control characters as `\\x09`."""
    evaluation = Evaluation(1.0, 50.0, 90.0, [float(i) for i in range(len(NAMES))], images=9, classes=NAMES)
    summary = {"data set": "folder|x", "recipe": "my*recipe*.toml", "model": "alexnet_small"}
    path = write_report(tmp_path, "a run", summary, evaluation)
    rows = _tables(path.read_text())
    assert ["data set", "folder|x"] in rows and ["recipe", "my*recipe*.toml"] in rows
    assert "| model | alexnet_small |" in path.read_text()  # an underscore in a word stays (demo prints it)
    names = [n.replace("\t", "\\x09") for n in NAMES]
    assert [r for r in rows if len(r) == 2 and r[1].endswith(".0")] == [[n, f"{i}.0"] for i, n in enumerate(names)]


def test_a_class_the_split_holds_no_image_of_says_so_not_zero(tmp_path):
    evaluation = Evaluation(1.0, 50.0, 90.0, [75.0, float("nan"), 0.0], images=8, classes=["cat", "dog", "eel"])
    rows = _tables(write_report(tmp_path, "a run", {}, evaluation).read_text())
    assert [r for r in rows if r[0] in ("cat", "dog", "eel")] == [["cat", "75.0"], ["dog", "no images"], ["eel", "0.0"]]
