"""The README's snippets run, so that they cannot drift from the code; and the repository stands alone.

* every ```python block runs (the bundled model, with clips cut to a few small frames so that the
  test takes seconds: :func:`glvc.video_io.read_video` is wrapped for the run); the app's
  gradio_client block runs against a launched app in tests/test_app_client.py;
* every ``python -m glvc ...`` / ``torchrun ... -m glvc ...`` / ``python -m glvc.data.prepare ...``
  command line in a ```bash block parses with the real parser, and the repository paths it names
  (``configs/``, ``examples/``, ``scripts/``) exist.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")


def blocks(language: str) -> list[str]:
    with open(README) as f:
        text = f.read()
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


def library_blocks() -> list[str]:
    """The ```python blocks that use the library; the app's gradio_client block needs a running app
    and runs in tests/test_app_client.py."""
    return [block for block in blocks("python") if "gradio_client" not in block]


def command_lines() -> list[list[str]]:
    """Every command of the bash blocks, split at ``&&``, comments removed, as argv lists."""
    out = []
    for block in blocks("bash"):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            while words:
                cut = words.index("&&") if "&&" in words else len(words)
                out.append(words[:cut])
                words = words[cut + 1:]
    return out


def test_readme_has_snippets():
    assert len(blocks("python")) >= 1
    assert sum(1 for argv in command_lines() if "glvc" in argv) >= 8


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(library_blocks())))
def test_python_snippet_runs(index, monkeypatch, capsys):
    from glvc import video_io

    read = video_io.read_video

    def small(path, *args, **kwargs):  # a few small frames: the snippet's code path, in seconds
        kwargs["max_frames"] = min(kwargs.get("max_frames") or 9, 9)
        kwargs["max_height"] = min(kwargs.get("max_height") or 64, 64)
        return read(path, *args, **kwargs)

    monkeypatch.setattr(video_io, "read_video", small)
    monkeypatch.chdir(REPO)
    exec(compile(library_blocks()[index], f"README.md python block {index}", "exec"), {"__name__": "readme"})
    assert capsys.readouterr().out  # the snippets print what they made


@pytest.mark.parametrize("argv", command_lines(), ids=lambda argv: " ".join(argv)[:60])
def test_command_line_parses(argv):
    from glvc.cli import build_parser
    from glvc.data.prepare import build_parser as prepare_parser

    for word in argv:
        if re.match(r"^(configs|examples|scripts)/", word):
            assert os.path.exists(os.path.join(REPO, word)), f"{' '.join(argv)}: {word} does not exist"
    if "-m" not in argv:
        return
    module = argv[argv.index("-m") + 1]
    rest = argv[argv.index("-m") + 2:]
    if module == "glvc":
        build_parser().parse_args(rest)  # SystemExit (status 2) on an unknown option or a bad value
    elif module == "glvc.data.prepare":
        prepare_parser().parse_args(rest)


def test_the_repository_stands_alone():
    """No tracked text file points to the team's shared folder or to an absolute path on a machine."""
    shared = "shared" + "/"
    patterns = [re.compile(p) for p in (r"(^|[\s`'\"(])(\.\./)?" + shared, r"/work" + r"/", r"/home/\w+/")]
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    bad = []
    for name in tracked:
        if not name.endswith((".py", ".md", ".json", ".csv", ".txt", ".sh", ".cfg", ".ini", ".toml")):
            continue
        with open(os.path.join(REPO, name), errors="replace") as f:
            for number, line in enumerate(f, 1):
                if any(p.search(line) for p in patterns):
                    bad.append(f"{name}:{number}: {line.strip()[:100]}")
    assert bad == [], "\n".join(bad)


def test_results_paths_are_relative_to_the_repository(tmp_path):
    from glvc.defaults import DEFAULT_MODEL, repo_relative

    assert repo_relative(DEFAULT_MODEL) == "glvc/pretrained/default"
    assert repo_relative(os.path.join(REPO, "examples", "bikes_2s.mp4")) == "examples/bikes_2s.mp4"
    assert repo_relative(str(tmp_path)) == str(tmp_path)  # outside the repository: as given


def test_commands_do_not_import_each_other():
    """cli imports bench and evaluate to register them; they, and the app's service, must not
    import cli (shared helpers live in glvc/defaults.py and glvc/progress.py)."""
    for name in ("bench.py", "evaluate.py", "service.py", "train.py", "pipeline.py", "defaults.py", "progress.py", "ratetable.py"):
        with open(os.path.join(REPO, "glvc", name)) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                target = ("." * node.level) + (node.module or "")
                assert target not in (".cli", "glvc.cli"), f"glvc/{name} imports {target}"
                assert not (target == "." and any(a.name == "cli" for a in node.names)), f"glvc/{name} imports cli"


def test_readme_pictures_exist_and_are_small():
    """Every image the README shows is in the repository (the app's pictures: docs/images/, from tests/browser)."""
    with open(os.path.join(REPO, "README.md")) as f:
        images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", f.read())
    assert {f"docs/images/picture_{name}.png" for name in ("per_frame", "inspector", "bits", "rd_sweep")} <= set(images)
    for path in images:
        assert not os.path.isabs(path) and os.path.isfile(os.path.join(REPO, path)), path
        if path.startswith("docs/images/"):
            assert os.path.getsize(os.path.join(REPO, path)) < 200_000, path
