"""Starting from a base model: which heads are re-trained, added or kept, and the network that results."""

from __future__ import annotations

import copy

from omegaconf import DictConfig, OmegaConf

from headsmith.data.snapshot import Snapshot
from headsmith.errors import HeadsmithError
from headsmith.models.backbones import set_backbone_mode, train_blocks, trainable_cut
from headsmith.models.heads import build_head, head_spec
from headsmith.models.net import Branch, MultiHeadNet, module_key

ACTIONS = ("retrain", "new", "keep")


def plan_heads(declared: dict, trained: dict[str, list[str]], base: dict[str, list[str]]) -> dict[str, str]:
    """head -> retrain | new | keep, for every head of the resulting model."""
    plan = {h: ("retrain" if h in base else "new") for h in trained}
    plan.update({h: "keep" for h in base if h not in trained})
    plan.update({h: a for h, a in declared.items() if a in ACTIONS})
    return plan


def plan_problems(declared: dict, trained: dict[str, list[str]], base: dict[str, list[str]]) -> list[str]:
    problems = []
    for head, action in declared.items():
        if action not in ACTIONS:
            problems.append(f"heads.{head}={action}: choose retrain, new or keep")
        elif action == "keep" and head in trained:
            problems.append(f"heads.{head}=keep: but the snapshot labels '{head}' and it is being trained; "
                            "use retrain, or leave it out of dataset.heads")
        elif action in ("keep", "retrain") and head not in base:
            where = f"the base model's heads are: {', '.join(base)}" if base else "there is no base_model"
            problems.append(f"heads.{head}={action}: '{head}' is not a head of the base model ({where})")
        elif action == "retrain" and head not in trained:
            problems.append(f"heads.{head}=retrain: the snapshot does not label '{head}' (it labels: "
                            f"{', '.join(trained)})")
        elif action == "new" and head in base:
            problems.append(f"heads.{head}=new: the base model already has a head '{head}'; use retrain, or give "
                            "the new head another name")
    for head, action in plan_heads(declared, trained, base).items():
        if action == "retrain" and head in base and head in trained and base[head] != trained[head]:
            problems.append(f"heads.{head}=retrain: classes differ: base model {base[head]}, snapshot "
                            f"{trained[head]}; re-train needs the same classes (add it as a new head under "
                            "another name to change them)")
    return problems


def branched(cfg: DictConfig, kept: list[str]) -> bool:
    """Whether the trained heads get a branch of their own (see models/net.py: Branch): by default when the
    backbone fine-tunes blocks (partial, lora) and the base model has heads to keep exactly as they are."""
    choice, mode = cfg.get("branch", "auto"), cfg.backbone.mode
    if mode == "frozen" or not kept:
        return False  # a frozen backbone already keeps every kept head exact
    return choice is True or (choice == "auto" and mode in ("partial", "lora"))


def build_from_base(cfg: DictConfig, base: MultiHeadNet,
                    trained: dict[str, list[str]]) -> tuple[MultiHeadNet, dict[str, str]]:
    """The base backbone (its weights; mode from cfg.backbone), kept heads frozen, re-trained heads starting from
    the base head's weights, new heads built from the `head` group. When `branched`, the base backbone stays frozen
    and the trained heads read a branch: their own copies of the blocks that fine-tune. Kept heads keep the base
    model's branches. Returns the network and the head plan."""
    declared = OmegaConf.to_container(cfg.heads) if cfg.get("heads") else {}
    plan = plan_heads(declared, trained, base.classes)
    heads, classes, specs = {}, {}, {}
    for head, action in plan.items():
        if action == "new":
            specs[head] = head_spec(OmegaConf.to_container(cfg.head, resolve=True), base.backbone.out_dim,
                                    len(trained[head]))
            heads[head], classes[head] = build_head(specs[head]), trained[head]
        else:
            heads[head] = copy.deepcopy(base.heads[module_key(head)]).requires_grad_(action == "retrain")
            classes[head], specs[head] = base.classes[head], base.head_specs[head]
    kept = [h for h, action in plan.items() if action == "keep"]
    branches = {}
    for name in base.branch_names:
        still = [h for h in base.branch(name).heads if h in kept]
        if still:
            branches[name] = Branch(copy.deepcopy(list(base.branch(name).blocks)), base.branch(name).cut, still)
    backbone = copy.deepcopy(base.backbone)
    mode, blocks = cfg.backbone.mode, cfg.backbone.get("trainable_blocks")
    lora = OmegaConf.to_container(cfg.backbone.lora, resolve=True) if cfg.backbone.get("lora") else None
    if branched(cfg, kept):
        backbone.requires_grad_(False)
        own = [h for h, action in plan.items() if action != "keep"]
        name = "+".join(own)
        while name in branches:
            name += "'"
        branches[name] = Branch.copied_from(backbone, trainable_cut(backbone, mode, blocks), own)
        train_blocks(list(branches[name].blocks), mode, lora, backbone)
    else:
        set_backbone_mode(backbone, mode, blocks, lora)
    return MultiHeadNet(backbone, heads, classes, specs, branches), plan


def regression_gate(base: MultiHeadNet, candidate: MultiHeadNet, golden: list[Snapshot], heads: list[str],
                    max_f1_drop: float, features_of=None) -> dict:
    """Evaluate base and candidate on every golden snapshot that labels one of `heads` (the kept ones). The gate
    fails when a head's macro F1 drops by more than `max_f1_drop`; `failures` says which head, where, how much.
    `features_of(snapshot)`: cached embeddings, when the candidate's frozen backbone is the base's."""
    # Imported here: evaluation loads torchmetrics (seconds), which the config checks that import this module skip.
    from headsmith.evaluation.evaluate import evaluate

    checks, failures = [], []
    for snapshot in golden:
        unknown = [h for h in heads if h in snapshot.manifest.heads
                   and not set(snapshot.manifest.heads[h].classes) <= set(base.classes[h])]
        if unknown:
            raise HeadsmithError(f"regression_gate.golden: snapshot '{snapshot.manifest.name}' has classes of "
                                 f"{unknown} that the base model does not know")
        features = features_of(snapshot) if features_of else None
        before = evaluate(base, snapshot, features=features if base.reads_embeddings else None).metrics
        after = evaluate(candidate, snapshot, features=features if candidate.reads_embeddings else None).metrics
        for head in [h for h in heads if h in before]:
            drop = before[head]["f1"] - after[head]["f1"]
            check = {"head": head, "snapshot": snapshot.manifest.name, "base_f1": before[head]["f1"],
                     "f1": after[head]["f1"], "drop": drop, "passed": drop <= max_f1_drop}
            checks.append(check)
            if not check["passed"]:
                failures.append(f"head '{head}' lost {drop:.4f} macro F1 on snapshot '{snapshot.manifest.name}' "
                                f"({before[head]['f1']:.4f} -> {after[head]['f1']:.4f}), more than the allowed "
                                f"{max_f1_drop:.4f}")
    return {"passed": not failures, "max_f1_drop": max_f1_drop, "checks": checks, "failures": failures}
