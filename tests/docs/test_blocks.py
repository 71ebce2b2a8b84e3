"""The docs test's reading of a page: which blocks run, the markers, console output checks."""

from __future__ import annotations

import pytest

from tests.docs.blocks import MarkerError, console_steps, missing, parse

PAGE = """# A page
<!-- docs-test: setup demo -->

```bash
kollm registry list
```

```yaml
name: not-run
```

<!-- docs-test: skip needs a GPU -->
```bash
kollm train recipes/koalpaca_lora.yaml
```

- in a list:

  ```python
  print("indented")
  ```

````console
$ echo '```'
```
````
"""


def test_runs_bash_python_console_and_lists_the_rest():
    page = parse(PAGE)
    assert [(b.line, b.lang) for b in page.runnable] == [
        (4, "bash"),
        (19, "python"),
        (23, "console"),
    ]
    assert [b.lang for b in page.blocks] == ["bash", "yaml", "bash", "python", "console"]
    assert page.setup == {"demo"}


def test_a_skip_marker_skips_the_next_block_and_keeps_its_reason():
    (skipped,) = parse(PAGE).skipped
    assert (skipped.line, skipped.skip) == (13, "needs a GPU")
    assert skipped.code == "kollm train recipes/koalpaca_lora.yaml\n"


def test_an_indented_block_is_dedented_and_a_longer_fence_holds_a_shorter_one():
    page = parse(PAGE)
    assert page.runnable[1].code == 'print("indented")\n'
    assert page.runnable[2].code == "$ echo '```'\n```\n"


def test_no_setup_means_an_empty_home():
    assert parse("```sh\ntrue\n```\n").setup == set()


@pytest.mark.parametrize(
    "text, says",
    [
        ("<!-- docs-test: skip -->\n```bash\ntrue\n```\n", "needs a reason"),
        ("<!-- docs-test: skip   -->\n```bash\ntrue\n```\n", "needs a reason"),
        ("<!-- docs-test: skip no GPU -->\n\n```bash\ntrue\n```\n", "right before a fence"),
        ("```bash\ntrue\n```\n<!-- docs-test: skip at the end -->\n", "right before a fence"),
        ("<!-- docs-test: setup cluster -->\n", "unknown setup"),
        ("<!-- docs-test: skipp typo -->\n```bash\ntrue\n```\n", "unknown docs-test comment"),
        ("text <!-- docs-test: skip inline --> text\n", "alone on its line"),
    ],
)
def test_a_marker_the_runner_cannot_follow_is_an_error(text, says):
    with pytest.raises(MarkerError, match=says):
        parse(text)


def test_a_marker_inside_a_fenced_block_is_text():
    page = parse("```markdown\n<!-- docs-test: skip -->\n```\n")
    assert [b.lang for b in page.blocks] == ["markdown"] and page.skipped == []


def test_expect_fail_is_the_first_line_only():
    page = parse("```bash\n# expect-fail\nfalse\n```\n```bash\ntrue\n# expect-fail\n```\n")
    assert [b.expect_fail for b in page.blocks] == [True, False]


def test_console_commands_their_continuations_and_expected_output():
    steps = console_steps(
        "$ kollm registry list \\\n    --json\n[\n  {...}\n]\n$ true\n$ echo hi\nhi\n"
    )
    assert [s.command for s in steps] == ["kollm registry list \\\n    --json", "true", "echo hi"]
    assert [s.expected for s in steps] == [["[", "  {...}", "]"], [], ["hi"]]


def test_console_output_before_any_command_is_an_error():
    with pytest.raises(MarkerError, match="before any"):
        console_steps("hello\n$ true\n")


def test_expected_lines_match_collapsed_whitespace_and_dots_match_anything():
    actual = "kollm-demo:1   production   score 12.34\nloop: promoted (bad rate 0.67)\n"
    assert (
        missing(["kollm-demo:1 production score ...", "", "loop: ... (bad rate ...)"], actual) == []
    )
    assert missing(["...score 12.34"], actual) == []
    assert missing(["kollm-demo:2 production"], actual) == ["kollm-demo:2 production"]


def test_an_expected_line_must_sit_within_one_actual_line():
    assert missing(["a ... b"], "a\nb\n") == ["a ... b"]


def test_regex_characters_in_expected_output_are_literal():
    assert (
        missing(["[1] rules/moving.hwpx (chars 0-290)"], "  [1] rules/moving.hwpx (chars 0-290)")
        == []
    )
    assert missing(["a.c"], "abc") == ["a.c"]
