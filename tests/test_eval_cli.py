"""captioning-eval end to end: official-pipeline parity on Flickr8k, the options, and every bad input."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from nltk.translate.bleu_score import corpus_bleu as nltk_corpus_bleu
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
from test_bleu import NLTK_WEIGHTS, load_flickr8k_test

from captioning.metrics import score_captions
from captioning.metrics.official import MissingDependency, check_metrics
from captioning.text import tokenize

EVAL = Path(sys.executable).with_name("captioning-eval")


def start_eval(*overrides: str, cwd: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([str(EVAL), *overrides], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def run_eval(*overrides: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = start_eval(*overrides, cwd=cwd, env=env)
    stdout, stderr = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def write_annotations(path: Path, references: dict[int, list[str]]) -> Path:
    images = [{"id": i, "file_name": f"{i}.jpg"} for i in references]
    annotations = [{"id": n, "image_id": i, "caption": c}
                   for n, (i, c) in enumerate((i, c) for i, refs in references.items() for c in refs)]
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return path


def write_results(path: Path, results: dict[int, str]) -> Path:
    path.write_text(json.dumps([{"image_id": i, "caption": c} for i, c in results.items()]))
    return path


def official(results: dict, references: dict, scorers) -> dict:
    """The official pipeline: PTBTokenizer on both sides, then each scorer on the tokenized strings."""
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": c} for c in references[i]] for i in results})
    res = tokenizer.tokenize({i: [{"caption": c}] for i, c in results.items()})
    return {name: scorer.compute_score(gts, res, **({"verbose": 0} if name == "bleu" else {}))
            for name, scorer in scorers.items()}


@pytest.fixture(scope="module")
def flickr8k(reference_data, tmp_path_factory):
    """Flickr8k test split as COCO files: caption #0 is the result, captions #1-#4 the references."""
    captions = load_flickr8k_test(reference_data)
    ids = {image: n for n, image in enumerate(sorted(captions))}  # COCO image ids are integers
    references = {ids[image]: caps[1:] for image, caps in captions.items()}
    results = {ids[image]: caps[0] for image, caps in captions.items()}
    root = tmp_path_factory.mktemp("flickr8k")
    return {"dir": root, "references": references, "results": results,
            "annotations_file": write_annotations(root / "refs.json", references),
            "results_file": write_results(root / "results.json", results)}


@pytest.fixture(scope="module")
def full_run(flickr8k):
    proc = run_eval("annotations=refs.json", "results=results.json", "output=scores.json", cwd=flickr8k["dir"])
    assert proc.returncode == 0, proc.stderr
    return proc, json.loads((flickr8k["dir"] / "scores.json").read_text())


def test_cli_report_is_the_training_loops_bleu_and_leaves_cwd_clean(flickr8k, full_run):
    proc, report = full_run
    expected = score_captions(flickr8k["results"], flickr8k["references"])
    assert {k: report[k] for k in expected} == expected
    assert [e["image_id"] for e in report["per_image"]] == list(flickr8k["results"])
    assert all(0 <= e[f"bleu{n}"] <= 1 for e in report["per_image"] for n in range(1, 5))
    assert "| BLEU-4 | " + f"{expected['bleu4']:.4f}" in proc.stdout
    assert sorted(p.name for p in flickr8k["dir"].iterdir()) == ["refs.json", "results.json", "scores.json"]


def test_cli_matches_official_pipeline_end_to_end(flickr8k, full_run):
    _, report = full_run
    (score, per_order), = official(flickr8k["results"], flickr8k["references"], {"bleu": Bleu(4)}).values()
    assert [report[f"bleu{n}"] for n in range(1, 5)] == pytest.approx(score, abs=1e-9, rel=0)
    per_image = [[e[f"bleu{n}"] for n in range(1, 5)] for e in report["per_image"]]
    assert per_image == [pytest.approx(list(s), abs=1e-9, rel=0) for s in zip(*per_order)]


def test_cli_official_metrics_on_a_subset(flickr8k, tmp_path):
    subset = dict(list(flickr8k["results"].items())[:100])
    write_results(tmp_path / "subset.json", subset)
    proc = start_eval(f"annotations={flickr8k['annotations_file']}", "results=subset.json", "output=scores.json",
                      "allow_subset=true", "metrics=[bleu,meteor,rouge_l,cider]", cwd=tmp_path)
    # METEOR's JVM takes seconds to load: compute the official numbers while the CLI computes ours
    expected = official(subset, flickr8k["references"],
                        {"bleu": Bleu(4), "meteor": Meteor(), "rouge_l": Rouge(), "cider": Cider()})
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    report = json.loads((tmp_path / "scores.json").read_text())
    assert report["num_images"] == 100
    assert [report[f"bleu{n}"] for n in range(1, 5)] == pytest.approx(expected["bleu"][0], abs=1e-9, rel=0)
    for name in ("meteor", "rouge_l", "cider"):
        assert report[name] == pytest.approx(float(expected[name][0]), abs=1e-9, rel=0), name
        assert [e[name] for e in report["per_image"]] == pytest.approx(list(expected[name][1]), abs=1e-9, rel=0)
    for label in ("METEOR", "ROUGE-L", "CIDEr-D"):  # CIDEr-D is ours (cider.py), equal to the official Cider
        assert f"| {label} | " in stdout


def test_cli_nltk_flavour(flickr8k, tmp_path):
    subset = dict(list(flickr8k["results"].items())[:200])
    write_results(tmp_path / "subset.json", subset)
    proc = run_eval(f"annotations={flickr8k['annotations_file']}", "results=subset.json", "output=scores.json",
                    "allow_subset=true", "bleu.flavour=nltk", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "scores.json").read_text())
    expected = nltk_corpus_bleu([[tokenize(c) for c in flickr8k["references"][i]] for i in subset],
                                [tokenize(c) for c in subset.values()], weights=NLTK_WEIGHTS)
    assert report["flavour"] == "nltk"
    assert [report[f"bleu{n}"] for n in range(1, 5)] == pytest.approx(expected, abs=1e-12, rel=0)


def test_official_metrics_without_java_say_what_to_install(tmp_path):
    write_annotations(tmp_path / "refs.json", {1: ["a dog runs"]})
    write_results(tmp_path / "results.json", {1: "a dog"})
    proc = run_eval("annotations=refs.json", "results=results.json", "metrics=[bleu,meteor]", cwd=tmp_path,
                    env={"PATH": str(tmp_path)})  # no java on this PATH
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: meteor needs Java")


def test_official_metrics_without_pycocoevalcap_say_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pycocoevalcap", None)  # makes `import pycocoevalcap` fail
    check_metrics(["bleu", "cider"])  # BLEU and CIDEr-D never need it
    with pytest.raises(MissingDependency, match="pip install pycocoevalcap"):
        check_metrics(["bleu", "rouge_l"])


REFS = {i: [f"a dog number {i} runs", f"the dog {i} is running"] for i in range(1, 9)}
RESULTS = [{"image_id": i, "caption": f"a dog {i} runs"} for i in range(1, 9)]


def _with(*changes) -> list:
    entries = [dict(e) for e in RESULTS]
    for position, entry in changes:
        entries[position] = entry
    return entries


BAD_INPUTS = {  # name -> (results file text or None for valid, annotations text or None, expected in stderr)
    "malformed results": ('[{"image_id": 1, "caption": "a"},\n {"image_id": 2 "caption": "b"}]', None,
                          ["results.json", "not valid JSON", "line 2"]),
    "malformed annotations": (None, '{"annotations": [\n\n}', ["refs.json", "not valid JSON", "line 3"]),
    "unknown image ids": (json.dumps(RESULTS + [{"image_id": 99, "caption": "x"}, {"image_id": "7", "caption": "y"}]),
                          None, ["results.json", "refs.json", "99, '7'"]),
    "missing images": (json.dumps(RESULTS[:2]), None, ["results.json", "6 of the 8", "3, 4, 5, 6, 7 (and 1 more)"]),
    "duplicate ids": (json.dumps(RESULTS + [{"image_id": 5, "caption": "again"}]), None,
                      ["results.json", "more than one caption", "image ids 5"]),
    "non-string caption": (json.dumps(_with((2, {"image_id": 3, "caption": 42}), (5, {"image_id": 6, "caption": None}))),
                           None, ["results.json", "non-string \"caption\"", "image ids 3, 6"]),
    "missing caption": (json.dumps(_with((3, {"image_id": 4}))), None, ["results.json", "image ids 4"]),
    "missing image id": (json.dumps(_with((1, {"caption": "a dog"}))), None, ["results.json", "positions 1"]),
    "results not a list": ('{"image_id": 1, "caption": "a"}', None, ["results.json", "expected a list"]),
    "non-string reference": (None, json.dumps({"annotations": [{"image_id": 2, "caption": ["a", "b"]}]}),
                             ["refs.json", "image ids 2"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_nonzero_naming_file_and_ids(tmp_path, case):
    results_text, annotations_text, expected = BAD_INPUTS[case]
    (tmp_path / "results.json").write_text(results_text or json.dumps(RESULTS))
    if annotations_text is None:
        write_annotations(tmp_path / "refs.json", REFS)
    else:
        (tmp_path / "refs.json").write_text(annotations_text)
    proc = run_eval("annotations=refs.json", "results=results.json", "output=scores.json", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout
    assert proc.stderr.startswith("error: ")
    for text in expected:
        assert text in proc.stderr, (text, proc.stderr)
    assert not (tmp_path / "scores.json").exists()


def test_allow_subset_accepts_partial_results(tmp_path):
    write_annotations(tmp_path / "refs.json", REFS)
    write_results(tmp_path / "results.json", {1: "a dog 1 runs", 2: "a cat"})
    proc = run_eval("annotations=refs.json", "results=results.json", "output=scores.json", "allow_subset=true",
                    cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "scores.json").read_text())
    assert [e["image_id"] for e in report["per_image"]] == [1, 2]
    assert report["bleu1"] == score_captions({1: "a dog 1 runs", 2: "a cat"}, REFS)["bleu1"]


@pytest.mark.parametrize("overrides, expected", [
    (["metrics=[bleu,spice]"], "unknown metrics ['spice']"),
    (["bleu.flavour=sacrebleu"], "unknown BLEU flavour 'sacrebleu'"),
    ([], "results file not found"),
])
def test_bad_options_exit_nonzero(tmp_path, overrides, expected):
    write_annotations(tmp_path / "refs.json", REFS)
    proc = run_eval("annotations=refs.json", "results=missing.json", *overrides, cwd=tmp_path)
    assert proc.returncode == 1
    assert expected in proc.stderr, proc.stderr
