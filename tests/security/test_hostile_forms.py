"""The web app's run form takes overrides as data: judged by what Hydra's parser makes of them (an escaped `$\\{`
is an interpolation once parsed), kept to the keys a run form needs, composed and validated before anything is
queued, for tune as for train. Each refusal is a 400 naming the override and the rule, and no run is queued."""

from __future__ import annotations

import re
from html import unescape

import httpx
import pytest

from headsmith.config import compose_train_config
from headsmith.training import runs
from headsmith.ui.overrides import interpolates, known_targets, targets
from conftest import snapshot_csv

# override -> words of the rule its refusal names
HOSTILE_TRAIN = {
    r"name=$\{oc.env:HOME\}": "interpolations",  # Hydra's escape: ${oc.env:HOME} once parsed
    r"name='$\{oc.env:HOME\}'": "interpolations",
    r"name=a\\$\{oc.env:HOME\}": "interpolations",  # OmegaConf's escape, live again after one more parse
    r"head.hidden=$\{oc.create:\{_target_: os.getpid\}\}": "interpolations",  # a node built inside a string
    "head={hidden: 8, extra: {nested: {_args_: [1]}}}": "_target_ and other _keys_",
    "logger.csv.save_dir=/tmp/elsewhere": "logger.csv.save_dir is not set from the browser",
    "callbacks.model_checkpoint.dirpath=checkpoints": "is not set from the browser",
    "ray.address=auto": "ray.address is not set from the browser",
    "paths.runs=runs": "paths.runs is not set from the browser",
    "name=../../outside": "a plain name",
    "base_model=tests": "no model 'tests': not a registered model (",  # a folder of the server's working directory
    "base_model=/etc": "a plain name",
    "base_model=base:99999999999999999999": "a plain name",
    "trainer.max_epochs=glob(*)": "glob",
}
HOSTILE_TUNE = {
    r"optimizer.lr=choice($\{oc.create:\{_target_: os.getpid\}\}, 0.1)": "interpolations",
    "tune.sampler.seed=1": "tune.sampler.seed is not set from the browser",
    "tune.params.head.hidden='choice({_target_: os.system}, 2)'": "_target_ and other _keys_",
    r"tune.params.optimizer.lr='choice($\{oc.env:HOME\}, 0.1)'": "interpolations",
    "backbone=choice(hf_text, nonsense)": "backbone has no option 'nonsense'",
    "trainer.max_epoch=1": "trainer.max_epoch",  # composed as `headsmith tune` composes: no such key
}


@pytest.fixture
def run_form(start_ui, workspace, reviews_csv, tiny_backbone):
    snapshot_csv(workspace, reviews_csv, "reviews", "text", {"sentiment": "sentiment"})
    url, base = start_ui("--data", str(tiny_backbone))
    client = httpx.Client(base_url=base, cookies=httpx.get(url).cookies, timeout=60)
    csrf = re.search(r'<meta name="csrf-token" content="(\w+)">', client.get("/runs").text).group(1)
    tiny = ["dataset.snapshot=reviews", "backbone=hf_text", f"backbone.pretrained={tiny_backbone}",
            "backbone.max_tokens=32", "trainer=cpu", "trainer.max_epochs=1", "name=hostile"]

    def post(kind: str, *overrides: str) -> httpx.Response:
        return client.post("/runs", data={"csrf": csrf, "kind": kind, "recipe": "",
                                          "overrides": "\n".join([*tiny, *overrides])})

    yield post
    client.close()


@pytest.mark.parametrize("kind, hostile", [("train", HOSTILE_TRAIN), ("tune", HOSTILE_TUNE)])
def test_hostile_overrides_are_refused_by_their_parsed_value_and_nothing_is_queued(run_form, workspace, kind, hostile):
    for override, words in hostile.items():
        refused = run_form(kind, *(["tune.trials=1", "optimizer.lr=choice(0.1, 0.01)"] if kind == "tune" else []),
                           override)
        assert refused.status_code == 400, (override, refused.status_code)
        items = re.findall(r"<li><code>(.*?)</code>: (.*?)</li>", unescape(refused.text), re.S)
        assert any(code == override and words in rule for code, rule in items), (override, items)
    assert runs.list_runs(workspace) == []


def test_interpolations_are_found_in_every_spelling():
    assert all(map(interpolates, ["${a}", "x${a}", r"\${a}", r"$\{a}", r"$\\{a}"]))
    assert not any(map(interpolates, ["$5", "{a}", "a$", "price: 5$ {each}"]))


def test_a_composed_config_names_only_headsmiths_own_targets(tmp_path):
    """The last check after composing: a `_target_` no headsmith config or recipe names is found wherever it is."""
    plain = compose_train_config(["dataset.snapshot=x", f"paths.output_dir={tmp_path}"])
    assert set(targets(plain)) <= known_targets() and "pytorch_lightning.Trainer" in known_targets()
    smuggled = compose_train_config(["dataset.snapshot=x", f"paths.output_dir={tmp_path}",
                                     "+head.extra={deep: [{_target_: os.getpid}]}"])
    assert set(targets(smuggled)) - known_targets() == {"os.getpid"}
