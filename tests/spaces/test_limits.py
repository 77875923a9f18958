"""Input limits: YAML bombs, oversize, deep or non-UTF-8 files, and ``--set`` overrides checked
exactly like the file (with upper limits on absurd sizes); each refusal is one line."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from space_cases import small_study

from spaces import load_study
from spaces._yaml import MAX_ALIASES, MAX_DEPTH, MAX_FILE_BYTES, MAX_NODES, parse_scalar
from stllr_engine.errors import StllrError

BOMB = textwrap.dedent("""\
    a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
    b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
    c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
    d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
    e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
    f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
    g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
    h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
    i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
    name: lol
    dataset: digits
""")  # 11 lines, 9^9 ≈ 387 million strings once expanded


def one_line(path: Path, overrides: dict[str, Any] | None = None) -> str:
    with pytest.raises(StllrError) as e:
        load_study(str(path), overrides)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{path}: "), msg
    return msg[len(f"{path}: "):]


def test_billion_laughs_is_one_line_fast_and_small(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    assert len(BOMB.splitlines()) == 11
    # a fresh interpreter: peak RSS growth and traced Python memory of the load alone
    probe = textwrap.dedent(f"""
        import json, resource, time, tracemalloc
        from spaces import load_study
        from stllr_engine.errors import StllrError
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        tracemalloc.start()
        start = time.perf_counter()
        try:
            load_study({str(path)!r})
            message = None
        except StllrError as exc:
            message = str(exc)
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
        print(json.dumps({{"message": message, "seconds": seconds, "peak": peak, "rss_growth": grown}}))
    """)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["message"] == (f"{path}: line 6: the YAML aliases expand to more than {MAX_NODES} values (an alias "
                            "bomb?); write each value out once instead of nesting aliases of aliases")
    assert r["seconds"] < 1.0, r
    assert r["peak"] < 100 * 2**20 and r["rss_growth"] < 100 * 2**20, r


def test_alias_uses_are_bounded(tmp_path):
    path = tmp_path / "aliases.yaml"
    path.write_text("name: x\nanchor: &v 1\nmany: [" + ", ".join(["*v"] * (MAX_ALIASES + 1)) + "]\n")
    assert one_line(path) == (f"line 3: more than {MAX_ALIASES} YAML aliases (*name) in one file; write the values "
                              "out instead of repeating aliases")
    path.write_text("name: x\nanchor: &v 1\nmany: [" + ", ".join(["*v"] * MAX_ALIASES) + "]\n")
    assert one_line(path).startswith("anchor: unknown key")  # within the limit: read, then validated


def test_nesting_and_cycles_are_bounded(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("name: " + "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5) + "\n")
    assert one_line(path) == (f"line 1: mappings and lists nest deeper than {MAX_DEPTH} levels (aliases expanded); "
                              "a study file nests a few levels: flatten it")
    path.write_text("name: " + "[" * 100_000 + "]" * 100_000 + "\n")  # no RecursionError either
    assert one_line(path).startswith(f"line 1: mappings and lists nest deeper than {MAX_DEPTH} levels")
    path.write_text("a: &a " + "[" * 30 + "]" * 30 + "\nb: " + "[" * 25 + "*a" + "]" * 25 + "\n")  # 1 + 25 + 30
    assert one_line(path).startswith(f"line 2: mappings and lists nest deeper than {MAX_DEPTH} levels (aliases")
    path.write_text("name: &a [1, *a]\n")
    assert one_line(path) == ("line 1: an alias names a collection that contains it (a recursive structure); a study "
                              "file cannot hold one: write the values out")


def test_file_size_is_bounded(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("name: x\n" + "#" * MAX_FILE_BYTES + "\n")
    assert one_line(path) == (f"larger than a study file may be ({MAX_FILE_BYTES} bytes = 1 MiB); a study file is "
                              "a few dozen lines: check the file")


def test_non_utf8_file_is_one_line(tmp_path, write_study):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: x\ndescription: caf\u00e9 cr\u00e8me\n".encode("latin-1"))
    assert one_line(path) == ("line 2: byte 0xe9 is not UTF-8 text (invalid continuation byte); save the file as "
                              "UTF-8")
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    assert one_line(path).startswith("line 1: byte 0x89 is not UTF-8 text")
    path.write_bytes(b"name: x\x00\n")  # UTF-8, but not text YAML accepts
    assert one_line(path) == ("line 1: not valid YAML (unacceptable character #x0000: special characters are not "
                              "allowed); remove that character (a study file is plain text)")
    bom = write_study()  # a UTF-8 file with a byte-order mark reads fine
    bom.write_bytes(b"\xef\xbb\xbf" + bom.read_bytes())
    assert load_study(str(bom)).name == "small"


def test_set_values_obey_the_same_limits(write_study):
    path = write_study()
    bomb_value = "{a: &a [x, x, x, x, x, x, x, x, x, x], " + ", ".join(
        f"{k}: &{k} [{', '.join([f'*{p}'] * 10)}]" for p, k in zip("abcdef", "bcdefg")) + "}"
    msg = one_line(path, {"description": bomb_value})
    assert msg == (f"--set description: line 1: the YAML aliases expand to more than {MAX_NODES} values (an alias "
                   "bomb?); write each value out once instead of nesting aliases of aliases")
    # already parsed elsewhere (yaml.safe_load, as `stllr --set` does): the same limits on the object
    parsed = yaml.safe_load(bomb_value)
    assert one_line(path, {"description": parsed}).startswith("--set description: line 1: the YAML aliases expand")
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    assert one_line(path, {"description": cyclic}) == (
        "--set description: a value contains itself (a recursive structure); write the values out")


def test_parse_scalar_reads_like_the_file():
    assert parse_scalar("1e-3") == 0.001 and parse_scalar("[1e3, abc]") == [1000.0, "abc"]
    assert parse_scalar({"low": "1e-4", "high": "1e-2", "log": True}) == {"low": 1e-4, "high": 1e-2, "log": True}
    assert parse_scalar(["-.inf", "1_000.5", "1e400"]) == [float("-inf"), 1000.5, float("inf")]
    assert parse_scalar("a: b: c") == "a: b: c"  # not YAML: stays text


def set_key(d: dict[str, Any], key: str, value: Any) -> None:
    node = d
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


# (key, value as typed after --set key=): the file with that text must give the same answer as the override
SETS = [
    # refused by both, with the same line
    ("search.depth.high", "1000000", "search.depth.high: depth=1000000 is more than the limit of 10000 hidden layers "
                                     "(vgg: blocks); use at most 10000"),
    ("search.depth", "{type: int, low: 1, high: 20000}", "search.depth.high: depth=20000 is more than the limit of "
                                                         "10000 hidden layers"),
    ("search.width", "[16, 20000000000]", "search.width.choices[1]: width=20000000000 is more than the limit of "
                                          "10000000000 neurons (vgg: channels) per layer"),
    ("model.fixed.depth", "123456", "model.fixed.depth: depth=123456 is more than the limit of 10000"),
    ("dataset.options.T", "100000000", "dataset.options.T: T=100000000 is more than the limit of 100000 time steps"),
    ("budget.trials", "-1", "budget.trials: -1 is not an integer >= 1"),
    ("budget.trials", "1000000", "budget.trials: trials=1000000 is more than the limit of 100000 configurations"),
    ("budget.epochs", "0", "budget.epochs: 0 is not an integer >= 1"),
    ("budget.epochs", "1e3", "budget.epochs: 1000.0 is not an integer >= 1"),
    ("budget.epochs", "1000000000", "budget.epochs: epochs=1000000000 is more than the limit of 10000 epochs"),
    ("budget", "{trials: 4, epochs: 1e3}", "budget.epochs: 1000.0 is not an integer >= 1"),
    ("budget.seeds", "[0,0]", "budget.seeds: [0, 0] is not a list of distinct seeds"),
    ("budget.seeds", "1000000000", "budget.seeds: seeds=1000000000 is more than the limit of 1000 seeds"),
    ("baseline.trials", "10000000", "baseline.trials: trials=10000000 is more than the limit of 100000"),
    ("sampler.population_size", "abc", "sampler.population_size: 'abc' is not an integer >= 2; give an integer >= 2"),
    ("sampler.seed", "4294967296", "sampler.seed: 4294967296 is not an integer in [0, 4294967295]; use a seed below "
                                   "2**32 (numpy's range)"),
    ("resources.cpu", "-1", "resources.cpu: -1 is not a number > 0"),
    ("search.lr.high", ".nan", "search.lr.high: nan is not a number"),
    # accepted by both (YAML 1.1 numbers inside a list or mapping were strings through --set)
    ("search.lr", "{type: float, low: 1e-4, high: 1e-2, log: true}", None),
    ("search.alpha_post", "[-1.0, 0.0, 1e0]", None),
    ("fixed.stllr", "{lambda_post: 5e-1}", None),
    ("search.depth.high", "10000", None),
    # 10^12 baseline batch sizes: counted for the grid check, never listed
    ("baseline.search", "{batch_size: {type: int, low: 1, high: 1000000000000}}", None),
]


@pytest.mark.parametrize("key,text,expected", SETS, ids=[f"{k}={t}" for k, t, _ in SETS])
def test_set_is_checked_like_the_file(write_study, key, text, expected):
    d = small_study()
    base = write_study(d, name="base.yaml")
    marked = yaml.safe_load(yaml.safe_dump(d))
    set_key(marked, key, "@@VALUE@@")
    in_file = write_study(text=yaml.safe_dump(marked, sort_keys=False).replace("'@@VALUE@@'", text), name="file.yaml")
    answers = []
    for path, overrides in ((in_file, None), (base, {key: yaml.safe_load(text)}), (base, {key: text})):
        try:
            spec = load_study(str(path), overrides)
            answers.append(("ok", spec.to_dict()))
        except StllrError as exc:
            msg = str(exc)
            assert "\n" not in msg
            answers.append(("error", msg.split(": ", 1)[1]))
    assert answers[0] == answers[1] == answers[2], answers
    if expected is None:
        assert answers[0][0] == "ok"
    else:
        assert answers[0][0] == "error" and answers[0][1].startswith(expected), answers[0]


def test_set_width_range(write_study):
    d = small_study()
    d["search"]["width"] = {"type": "int", "low": 16, "high": 32}
    path = write_study(d)
    assert one_line(path, {"search.width.low": "2e9"}) == "search.width.low: 2000000000.0 is not an integer; give a " \
                                                          "whole number"
    assert one_line(path, {"search.width.low": 2_000_000_000}) == (
        "search.width: low 2000000000 > high 32; swap them (low: 32, high: 2000000000)")
    assert one_line(path, {"search.width.high": 10**11}) == (
        "search.width.high: width=100000000000 is more than the limit of 10000000000 neurons (vgg: channels) per "
        "layer; use at most 10000000000")
    assert load_study(str(path), {"search.width.high": 2_000_000_000}).search["width"].high == 2_000_000_000


def test_grid_size_is_counted_not_listed(write_study):
    d = small_study()
    d.pop("per_layer")
    d["search"] = {"width": {"type": "int", "low": 1, "high": 2_000_000_000},
                   "alpha_post": {"type": "float", "low": -1.0, "high": 1.0, "step": 1e-9}}
    d["sampler"] = {"name": "grid"}
    assert one_line(write_study(d)) == (
        "sampler.name: the grid has 4000000002000000000 points, more than the limit of 1000000; use coarser "
        "steps or fewer values, or another sampler (tpe, nsga2, random)")
