"""The verdict by output kind: output kind x recipe -> edgepack's verdict and the figures it rests on, beside an
independent check of the same bundle (a bare ai_edge_litert interpreter on model.tflite against Keras on the
same held-out inputs, judged on the decisions a user makes: classes, thresholds, pixel classes, nearest
neighbours, accuracy with labels, per-column R²). A row is *wrong* when edgepack said MATCH and the independent
check finds the bundle outside the recipe's budget, or refused a bundle the check finds inside it.

    .venv/bin/python benchmarks/verdict_matrix.py [--recipes float32,int8] [--kinds classifier,mixed]
                                                  [--out benchmarks/results/verdict_matrix.json]

Prints a markdown table; writes the raw numbers as JSON. The models are generated here (seeded, small).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("EDGEPACK_NO_CACHE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
RECIPES = ["float32", "float16", "dynamic", "int8", "int16x8"]


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def kinds(work: Path) -> list[dict]:
    """(name, model path, eval arrays, calibration arrays, output name, kind) of each generated model."""
    import keras
    from sklearn.datasets import load_digits
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    out = []
    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    xt, yt, xe, ye = x[:1200], d.target[:1200], x[1400:], d.target[1400:]
    inp = keras.Input((64,), name="x")
    logits = keras.layers.Dense(10)(keras.layers.Dense(64, activation="relu")(inp))
    trainer = keras.Model(inp, logits)
    trainer.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    trainer.fit(xt, yt, epochs=30, verbose=0)
    for t in (1, 25, 100):       # confident, low-confidence, nearly flat
        m = keras.Model(inp, keras.layers.Softmax(name="probs")(keras.layers.Rescaling(1 / t)(logits)))
        path = work / f"classifier-t{t}.keras"
        m.save(path)
        out.append(dict(name=f"classifier (logits/{t})", path=path, x={"x": xe}, y=ye, cal={"x": xt[:300]},
                        output="probs", kind="class-scores", model=m))
    # mixed scales: 4 box coordinates in pixels + a sigmoid score in one [N, 5] tensor
    inp = keras.Input((8,), name="x")
    h = keras.layers.Dense(16, activation="relu")(inp)
    box = keras.layers.Rescaling(300.0, offset=320.0)(keras.layers.Dense(4, activation="tanh")(h))
    m = keras.Model(inp, keras.layers.Concatenate(name="det")([box, keras.layers.Dense(1, activation="sigmoid")(h)]))
    xs = rng.normal(0, 1, (600, 8)).astype(np.float32)
    m.save(work / "mixed.keras")
    out.append(dict(name="boxes + score [N,5]", path=work / "mixed.keras", x={"x": xs[300:]}, y=None,
                    cal={"x": xs[:300]}, output="det", kind="values", model=m))
    # float arithmetic at large magnitudes: x - mean(x) at 1e4
    inp = keras.Input((16,), name="x")
    dense = keras.layers.Dense(16, use_bias=False, name="centered")
    m = keras.Model(inp, dense(inp))
    dense.set_weights([(np.eye(16) - 1 / 16).astype(np.float32)])
    xl = (1e4 + rng.normal(0, 1, (600, 16))).astype(np.float32)
    m.save(work / "magnitude.keras")
    out.append(dict(name="x - mean(x) at 1e4", path=work / "magnitude.keras", x={"x": xl[300:]}, y=None,
                    cal={"x": xl[:300]}, output="centered", kind="values", model=m))
    # segmentation logits [N,16,16,4]
    inp = keras.Input((16, 16, 3), name="image")
    m = keras.Model(inp, keras.layers.Conv2D(4, 1, name="logits")(
        keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)))
    xi = rng.uniform(0, 1, (200, 16, 16, 3)).astype(np.float32)
    m.save(work / "seg.keras")
    out.append(dict(name="segmentation logits", path=work / "seg.keras", x={"image": xi[100:]},
                    y=m.predict(xi[100:], verbose=0).argmax(-1), cal={"image": xi[:100]}, output="logits",
                    kind="pixel-classes", model=m))
    # sigmoid [N,1]
    inp = keras.Input((32,), name="x")
    m = keras.Model(inp, keras.layers.Dense(1, activation="sigmoid", name="p")(
        keras.layers.Dense(64, activation="relu")(inp)))
    xp = rng.normal(0, 1, (600, 32)).astype(np.float32)
    m.save(work / "sigmoid.keras")
    out.append(dict(name="sigmoid [N,1]", path=work / "sigmoid.keras", x={"x": xp[300:]}, y=None,
                    cal={"x": xp[:300]}, output="p", kind="probabilities", model=m))
    # embedding (unit-norm rows)
    inp = keras.Input((32,), name="x")
    m = keras.Model(inp, keras.layers.UnitNormalization(name="emb")(keras.layers.Dense(64)(
        keras.layers.Dense(64, activation="relu")(inp))))
    m.save(work / "emb.keras")
    out.append(dict(name="embedding (unit norm)", path=work / "emb.keras", x={"x": xp[300:]}, y=None,
                    cal={"x": xp[:300]}, output="emb", kind="embedding", model=m))
    # tiny regression (~1e-7)
    inp = keras.Input((8,), name="x")
    last = keras.layers.Dense(2, name="tiny")
    m = keras.Model(inp, last(keras.layers.Dense(32, activation="relu")(inp)))
    w, b = last.get_weights()
    last.set_weights([(w * 3e-7).astype(np.float32), np.zeros_like(b)])
    m.save(work / "tiny.keras")
    out.append(dict(name="tiny regression (1e-7)", path=work / "tiny.keras", x={"x": xs[300:]}, y=None,
                    cal={"x": xs[:300]}, output="tiny", kind="values", model=m))
    return out


def independent(k: dict, bundle: Path, tol) -> dict:
    """The independent figures of a bundle, and whether they are within the recipe's budget."""
    from tests.field_models import raw_outputs
    ref = np.asarray(k["model"].predict(k["x"], verbose=0), np.float64)
    got = np.asarray(raw_outputs(bundle, k["x"])[k["output"]], np.float64)
    kind = k["kind"]
    fig: dict = {}
    if kind in ("class-scores", "pixel-classes"):
        fig["flips"] = float(np.mean(ref.argmax(-1) != got.argmax(-1)))
        ok = fig["flips"] <= tol.flips + 0.01
        if k["y"] is not None:
            fig["drop"] = 100 * float(np.mean(ref.argmax(-1) == k["y"]) - np.mean(got.argmax(-1) == k["y"]))
            ok = ok and fig["drop"] <= tol.max_drop + 0.5
    elif kind == "probabilities":
        fig["flips"] = float(np.mean((ref > 0.5) != (got > 0.5)))
        ok = fig["flips"] <= tol.flips + 0.01
    elif kind == "embedding":
        def nn(a):
            s = a @ a.T
            np.fill_diagonal(s, -np.inf)
            return s.argmax(1)
        fig["nn_changed"] = float(np.mean(nn(ref) != nn(got)))
        ok = fig["nn_changed"] <= tol.neighbours + 0.02
    else:
        rc, gc = ref.reshape(len(ref), -1), got.reshape(len(got), -1)
        r2 = 1 - ((gc - rc) ** 2).sum(0) / np.maximum(((rc - rc.mean(0)) ** 2).sum(0), 1e-300)
        fig["min_column_r2"] = float(r2.min())
        exact = rc.astype(np.float64)
        if k["name"].startswith("x - mean"):
            xx = k["x"]["x"].astype(np.float64)
            exact = xx - xx.mean(1, keepdims=True)
            fig["model_err_vs_float64"] = float(np.abs(rc - exact).max())
            fig["bundle_err_vs_float64"] = float(np.abs(gc - exact).max())
            ok = fig["bundle_err_vs_float64"] <= 2 * fig["model_err_vs_float64"]
        else:
            ok = fig["min_column_r2"] >= tol.r2_min - 0.02
    return {"figures": fig, "within": bool(ok)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--kinds", default="")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "verdict_matrix.json"))
    args = ap.parse_args()
    from packager import api
    from packager.errors import EdgepackError
    from packager.recipes import get_recipe
    work = Path(tempfile.mkdtemp(prefix="edgepack-verdict-"))
    rows = []
    for k in kinds(work):
        if args.kinds and not any(s in k["name"] for s in args.kinds.split(",")):
            continue
        data, cal = work / f"{k['path'].stem}-eval.npz", work / f"{k['path'].stem}-cal.npz"
        np.savez(data, **k["x"], **({"y": k["y"]} if k["y"] is not None else {}))
        np.savez(cal, **k["cal"])
        for recipe in args.recipes.split(","):
            rec = get_recipe(recipe)
            row = {"kind": k["name"], "output_kind": k["kind"], "recipe": recipe}
            out = work / f"{k['path'].stem}-{recipe}"
            try:
                res = api.build(k["path"], target="rpi", recipe=recipe, data=data, runtimes=["ai-edge-litert"],
                                calibration=cal if rec.needs_calibration else None, output=out, use_cache=False)
                rep = res.verification
                row.update(verdict=rep.verdict, line=rep.line(), inferred=rep.runtimes[0].metrics[0].kind)
                bundle = res.bundle
            except EdgepackError as exc:
                row.update(verdict="refused" if exc.exit_code == 4 else f"exit {exc.exit_code}",
                           line=exc.message[:300])
                try:
                    bundle = api.build(k["path"], target="rpi", recipe=recipe, verify=False,
                                       runtimes=["ai-edge-litert"], calibration=cal if rec.needs_calibration else None,
                                       output=out.with_name(out.name + "-unverified"), use_cache=False).bundle
                except EdgepackError:
                    bundle = None
            if bundle is not None:
                check = independent(k, bundle, rec.tolerance)
                row.update(check)
                matched = row["verdict"] == "MATCH"
                row["wrong"] = matched != check["within"] and row["verdict"] in ("MATCH", "refused")
            rows.append(row)
            print(json.dumps(row), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    print("\n| model (kind) | recipe | verdict | what it rests on | independent check | agree |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        figs = ", ".join(f"{k}={v:.4g}" for k, v in (r.get("figures") or {}).items())
        agree = "-" if "wrong" not in r else ("**NO**" if r["wrong"] else "yes")
        print(f"| {r['kind']} ({r['output_kind']}) | {r['recipe']} | {r['verdict']} | {r['line'][:140]} | "
              f"{figs} | {agree} |")


if __name__ == "__main__":
    main()
