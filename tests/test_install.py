"""conf/ and recipes/ are found from an installed wheel as from the checkout; users add their own recipe folders."""

import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_carries_configs_and_recipes(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(ROOT)], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("headsmith-*.whl"))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    script = textwrap.dedent(f"""
        import headsmith.config as c
        assert c.config_dir() == __import__("pathlib").Path({str(site)!r}) / "headsmith" / "conf", c.config_dir()
        cfg = c.compose_train_config(["recipe=sentiment", "paths.output_dir=out", "trainer.max_epochs=3"])
        print(cfg.name, cfg.dataset.snapshot, cfg.trainer.max_epochs)
        import headsmith.evaluation.report as r, headsmith.evaluation.compare as k, headsmith.ui.pages as p
        pages = __import__("pathlib").Path(p.__file__).with_name("templates")
        assert all(t.is_file() for t in (r.TEMPLATE, k.TEMPLATE, pages / "dataset.html", pages / "playground.html"))
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env={"PYTHONPATH": str(site)},
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["sentiment", "rotten-tomatoes", "3"]


def test_user_recipe_folder(tmp_path, reviews_snapshot, tiny_backbone):
    folder = tmp_path / "my-recipes"
    folder.mkdir()
    (folder / "house-rules.yaml").write_text(textwrap.dedent(f"""
        # @package _global_
        defaults:
          - override /head: mlp
        name: house-rules
        dataset: {{snapshot: reviews, heads: [long]}}
        backbone: {{pretrained: {tiny_backbone}, max_tokens: 32}}
        trainer: {{max_epochs: 1}}
    """))
    listed = run_cli("recipe", "list", env={"HEADSMITH_RECIPES": str(folder)})
    assert "house-rules" in listed.stdout and "sentiment" in listed.stdout
    trained = run_cli("train", "recipe=house-rules", "trainer=cpu", env={"HEADSMITH_RECIPES": str(folder)})
    assert trained.returncode == 0, trained.stdout + trained.stderr
    assert "test metrics, head 'long'" in trained.stdout
