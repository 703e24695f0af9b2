"""The README's algorithm table is generated from ALGOS, and must not drift from it."""
import re
from pathlib import Path

from lightrl.algos import algos_markdown

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_algorithm_table_matches_algos():
    text = README.read_text()
    block = re.search(r"<!-- algos:begin -->\n(.*?)\n<!-- algos:end -->", text, flags=re.S)
    assert block, "README.md lost its <!-- algos:begin --> / <!-- algos:end --> markers"
    assert block.group(1).strip() == algos_markdown().strip(), (
        "README.md's algorithm table is stale: replace the lines between the markers with the "
        "output of `python -m lightrl.run --list-algos`"
    )
