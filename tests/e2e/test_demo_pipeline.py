"""What `make demo` does, on the demo's own config: the pipeline job (embed then neighbours in
one Spark application) through ./spark-submit.sh, then `lookalike similar` and the notebook on its
output. Offline (made so here, whatever the machine's network), conf/local.yaml falls back loudly
to efficientnet_lite2, whose ImageNet weights come with a pip package: real recommendations.

One run of the pipeline (a module fixture) is what every test here reads."""

import json
from types import SimpleNamespace

import nbformat
import pytest
from nbclient import NotebookClient

from tests.support.outputs import read_output
from tests.support.paths import ROOT, SAMPLE_LABELS
from tests.support.procs import run_script

pytestmark = pytest.mark.slow  # a spark-submit application of its own (make test-fast leaves it out)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """./spark-submit.sh pipeline on conf/local.yaml, offline; its output, read back."""
    tmp = tmp_path_factory.mktemp("demo")
    out = tmp / "output"
    # No internet: an empty Keras cache, and every HTTP(S) request sent to a closed local port.
    offline = {
        "KERAS_HOME": str(tmp / "keras-home"),
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
        "http_proxy": "http://127.0.0.1:9",
        "NO_PROXY": "",
        "no_proxy": "",
    }
    result = run_script(
        [
            str(ROOT / "spark-submit.sh"),
            "pipeline",
            "--config",
            str(ROOT / "conf" / "local.yaml"),
            "--set",
            f"output.embeddings={out}/embeddings",
            "--set",
            f"output.errors={out}/errors",
            "--set",
            f"output.neighbours={out}/neighbours",
            "--set",
            f"model.cache_dir={tmp / 'weights-cache'}",
        ],
        timeout=900,
        env=offline,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return SimpleNamespace(
        out=out,
        result=result,
        output=output,
        embeddings=read_output(out / "embeddings").to_pandas(),
        neighbours=read_output(out / "neighbours").to_pandas(),
    )


def test_pipeline_on_the_demo_config_embeds_with_the_efficientnet_lite2_fallback(demo):
    summary = json.loads(demo.result.stdout.strip().splitlines()[-1])
    assert summary["job"] == "pipeline" and summary["ok"] is True

    embeddings = demo.embeddings
    assert len(embeddings) == 60 and embeddings["dim"].eq(1280).all()
    # Every row says which model made it, and that it stands in for VGG16; the log says it loudly.
    assert set(embeddings["model"]) == {"efficientnet_lite2"}
    assert set(embeddings["weights"]) == {
        "imagenet:efficientnet-lite2-9656183e.pth@md5:1ff5589222bbf5d55c3ed7cfcd6de936"
        " (fallback: vgg16 imagenet unavailable)"
    }
    assert "Using efficientnet_lite2" in demo.output and "model.weights=/path/to/vgg16_weights" in demo.output
    assert "RANDOM-INIT" not in demo.output and "not real recommendations" not in demo.output


def test_pipeline_on_the_demo_config_gives_real_recommendations(demo):
    neighbours = demo.neighbours
    assert len(neighbours) == 60 * 10
    assert (neighbours["item_id"] != neighbours["neighbour_id"]).all()
    # Real recommendations: scores spread over a real range (random-init VGG16 gave 0.998-0.999),
    # and the nearest neighbours share the query's department far more often than chance (0.10).
    assert neighbours["score"].max() - neighbours["score"].min() > 0.2
    top5 = neighbours[neighbours["rank"] <= 5]
    same_department = (top5["item_id"].str.split("/").str[0] == top5["neighbour_id"].str.split("/").str[0]).mean()
    assert same_department > 0.25, same_department


def test_similar_on_the_demo_output(demo):
    item = sorted(demo.embeddings["item_id"])[0]
    similar = run_script(
        [
            str(ROOT / ".venv" / "bin" / "lookalike"),
            "similar",
            item,
            "--neighbours",
            str(demo.out / "neighbours"),
            "-k",
            "5",
            "--format",
            "json",
        ],
        timeout=120,
    )
    assert similar.returncode == 0, similar.stderr
    shown = json.loads(similar.stdout)
    rows = shown["neighbours"]
    neighbours = demo.neighbours
    expected = neighbours[neighbours["item_id"] == item].sort_values("rank").head(5)
    assert [r["neighbour_id"] for r in rows] == list(expected["neighbour_id"])


def test_the_readmes_duckdb_example_runs_as_written_on_the_demo_output(demo, monkeypatch):
    # Issue 24: it joined an attributes.parquet that was neither shipped nor explained.
    import csv
    import re

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    code = next(block for block in re.findall(r"```python\n(.*?)```", readme, re.S) if "clothing-attributes" in block)
    assert '"output/neighbours"' in code
    monkeypatch.chdir(ROOT)  # the example runs from the repository root, after `make demo`
    namespace: dict = {}
    exec(code.replace('"output/neighbours"', f'"{demo.out}/neighbours"'), namespace)  # as written, on the demo output
    rows = namespace["rows"]
    attributes = {r["item_id"]: r for r in csv.DictReader(open(ROOT / "samples" / "clothing-attributes.csv"))}
    query = re.search(r"n.item_id = '([^']+)'", code).group(1)
    expected = demo.neighbours[demo.neighbours["item_id"] == query].sort_values("rank")
    wanted = [
        (r.rank, r.neighbour_id)
        for r in expected.itertuples()
        if attributes[r.neighbour_id]["category"] == attributes[query]["category"]
        and attributes[r.neighbour_id]["in_stock"] == "true"
    ]
    assert rows and [(rank, neighbour) for rank, neighbour, _ in rows] == wanted


def test_notebook_on_the_demo_output(demo, monkeypatch):
    item = sorted(demo.embeddings["item_id"])[0]
    # The notebook, top to bottom, against exactly this output.
    nb = nbformat.read(ROOT / "notebooks" / "explore_recommendations.ipynb", as_version=4)
    client = NotebookClient(
        nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(ROOT / "notebooks")}}
    )
    monkeypatch.setenv("LOOKALIKE_OUTPUT", str(demo.out))
    monkeypatch.setenv("LOOKALIKE_LABELS", str(SAMPLE_LABELS))
    client.execute()
    html = "".join(
        o.get("data", {}).get("text/html", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    assert "lk-report" in html and item.split("/")[-1] in html
