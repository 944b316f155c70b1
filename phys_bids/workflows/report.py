"""Per-subject HTML reports, readable offline: one figure per step, the acquisition
parameters used and where each came from, QC flags and warnings.

Figures are PNG files under ``sub-X/figures/`` referenced by relative paths from
``sub-X.html`` at the root of the derivatives (the fMRIPrep layout). Nothing in a
report depends on the clock, so reruns produce the same files.
"""

from __future__ import annotations

import html
import io
import json

import nibabel as nib
import numpy as np

from ..bids.outputs import figure_path, report_path

__all__ = ["run_figures", "subject_report", "volumes_figure"]

_COLOURS = np.array([[0, 0, 0, 0], [0.2, 0.8, 0.2, 0.45], [0.95, 0.95, 0.3, 0.45],
                     [0.2, 0.5, 1.0, 0.45]])


def _canonical(path) -> np.ndarray:
    return nib.as_closest_canonical(nib.load(str(path))).get_fdata(dtype=np.float32)


def _slices(vol: np.ndarray, centre=None):
    c = [s // 2 for s in vol.shape[:3]] if centre is None else centre
    return [np.rot90(vol[c[0], :, :]), np.rot90(vol[:, c[1], :]), np.rot90(vol[:, :, c[2]])]


def _centre(mask: np.ndarray) -> list[int]:
    idx = np.argwhere(mask)
    return [int(v) for v in idx.mean(0)] if idx.size else [s // 2 for s in mask.shape]


def png_bytes(fig) -> bytes:
    """A finished matplotlib figure as PNG bytes (tight layout, no Software tag - so that
    reruns write identical files), the figure closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _figure(panels, title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.2), dpi=80)
    for ax, draw in zip(axes, panels, strict=True):
        draw(ax)
        ax.set_axis_off()
    fig.suptitle(title, fontsize=10)
    return png_bytes(fig)


def _grey(ax, sl):
    hi = np.percentile(sl, 99.5) if np.any(sl) else 1.0
    ax.imshow(sl, cmap="gray", vmin=0, vmax=hi or 1.0, interpolation="nearest")


def _contour_panels(img, mask, colour="r"):
    c = _centre(mask > 0)
    pairs = zip(_slices(img, c), _slices(mask.astype(np.float32), c), strict=True)

    def make(a, m):
        def draw(ax):
            _grey(ax, a)
            if np.any(m > 0.5) and np.any(m < 0.5):
                ax.contour(m, levels=[0.5], colors=colour, linewidths=0.8)
        return draw
    return [make(a, m) for a, m in pairs]


def _save(writer, rel: str, png: bytes) -> str:
    writer.write_bytes(rel, png)
    return rel


def run_figures(writer, source: str, subject: str, out: dict, template) -> dict[str, str]:
    """One PNG per step of one run; returns {step: path relative to the derivatives}."""
    native = _canonical(out["n4"])
    mask = _canonical(out["mask"]) > 0
    figs = {}
    raw = _canonical(out["raw"]) if out.get("raw") else native
    figs["skull strip"] = _save(writer, figure_path(source, step="skullstrip"), _figure(
        _contour_panels(raw, mask), "brain mask (red) on the input image"))
    field = _canonical(out["bias_field"])
    c = _centre(mask)

    def field_panel(sl):
        def draw(ax):
            ax.imshow(sl, cmap="magma", interpolation="nearest")
        return draw
    figs["N4"] = _save(writer, figure_path(source, step="n4", suffix="biasfield"), _figure(
        [field_panel(s) for s in _slices(field, c)], "N4 bias field"))
    in_tpl = _canonical(out["in_template"])
    tmask = _canonical(template.mask) > 0
    figs["registration"] = _save(writer, figure_path(source, step="registration"), _figure(
        _contour_panels(in_tpl, tmask, colour="c"),
        f"brain in {template.name} space; template brain outline (cyan)"))
    dseg = nib.as_closest_canonical(nib.load(str(out["dseg"]))).get_fdata().astype(np.int64)

    def seg_panel(a, d):
        def draw(ax):
            _grey(ax, a)
            ax.imshow(_COLOURS[np.clip(d, 0, 3)], interpolation="nearest")
        return draw
    panels = [seg_panel(a, d) for a, d in
              zip(_slices(native, c), _slices(dseg, c), strict=True)]
    figs["segmentation"] = _save(writer, figure_path(source, step="segmentation"), _figure(
        panels, "tissue labels: GM green, WM yellow, CSF blue"))
    if out.get("qmri_maps"):
        maps = _canonical(out["qmri_maps"])
        harm = _canonical(out["harmonized"])
        z = c[2]
        scales = (("PD", 0, 1.1, "gray"), ("R1 (1/s)", 0, 1.6, "viridis"),
                  ("R2* (1/s)", 0, 40, "magma"), ("MTsat (p.u.)", 0, 3, "cividis"))

        def map_panel(sl, name, lo, hi, cmap):
            def draw(ax):
                im = ax.imshow(sl, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
                ax.set_title(name, fontsize=9)
                ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
            return draw

        def harm_panel(sl):
            def draw(ax):
                _grey(ax, sl)
                ax.set_title("harmonised", fontsize=9)
            return draw
        qpanels = [map_panel(np.rot90(maps[:, :, z, k]), *scales[k]) for k in range(4)]
        qpanels.append(harm_panel(np.rot90(harm[:, :, z])))
        figs["qMRI"] = _save(writer, figure_path(source, step="qmri"), _figure(
            qpanels, "estimated qMRI maps (network estimates from this image) and the image "
            "re-synthesised at the reference protocol"))
    return figs


def _table(rows: list[tuple], head: tuple) -> str:
    h = "".join(f"<th>{html.escape(str(x))}</th>" for x in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(x))}</td>" for x in r) + "</tr>"
                   for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


_CSS = ("body{font-family:sans-serif;max-width:1000px;margin:auto}table{border-collapse:"
        "collapse;margin:.5em 0}td,th{border:1px solid #bbb;padding:2px 8px}"
        ".flag{color:#a00}.ok{color:#070}img{max-width:100%}")


def volumes_figure(writer, source: str, volumes: dict, mc: dict | None,
                   calibrated: dict | None) -> str | None:
    """The tissue volumes with their bounds, one panel per tissue: the volume (dot), the
    Monte-Carlo median (cross), [Q1, Q3] (thick bar), [2.5, 97.5] % (thin bar) and the
    calibrated 95 % interval (grey band). None without Monte-Carlo samples."""
    if not mc:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(9, 2.6), dpi=80)
    for ax, t in zip(axes, ("GM", "WM", "CSF"), strict=True):
        m = mc[t]
        if calibrated and t in calibrated:
            lo, hi = calibrated[t]
            ax.axhspan(lo, hi, color="0.85", label="calibrated 95 %")
        ax.vlines(0, m["p2_5"], m["p97_5"], color="C0", lw=1.5, label="MC 2.5-97.5 %")
        ax.vlines(0, m["q1"], m["q3"], color="C0", lw=6, label="MC [Q1, Q3]")
        ax.plot(0, m["median"], "x", color="k", ms=8, label="MC median")
        ax.plot(0, volumes[t], "o", color="C3", ms=5, label="volume")
        ax.set_xlim(-1, 1)
        ax.set_xticks([])
        ax.set_title(f"{t} (mL)", fontsize=9)
    axes[-1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return _save(writer, figure_path(source, step="volumes", suffix="T1w"), png_bytes(fig))


def _fits_section(fits: list[dict]) -> str:
    """Model-based fits of the session's qMRI acquisitions vs the network's estimates."""
    rows, errors = [], []
    for f in fits:
        if "error" in f:
            errors.append(f"{f['kind']} {f['name']}: {f['error']}")
            continue
        for name, m in f["maps"].items():
            c = m.get("comparison") or {}
            cells = []
            for t in ("GM", "WM"):
                x = c.get(t)
                cells.append("n/a" if not x else f"{x['fit_median']:.3g} / "
                             f"{x['estimate_median']:.3g}")
            r = c.get("pearson_r")
            rows.append((f"{f['kind']} ({f['method']})", name, *cells,
                         "n/a" if r is None else f"{r:.2f}", m["path"].rsplit("/", 1)[-1]))
    out = ["<h3>qMRI: model-based fits of this session's acquisitions vs the network's "
           "estimates</h3>"]
    if rows:
        out.append(_table(rows, ("acquisition (fit)", "map", "GM median fit / estimate",
                                 "WM median fit / estimate", "voxelwise r", "file")))
        out.append("<p>The fitted map is resampled onto the T1w grid by scanner "
                   "coordinates (same-session acquisitions assumed aligned); tissues from "
                   "this run's segmentation. PD is in arbitrary units in both: compare its "
                   "correlation, not its medians.</p>")
    if errors:
        out.append("<ul>" + "".join(f"<li class='flag'>not fitted: {html.escape(e)}</li>"
                                    for e in errors) + "</ul>")
    return "".join(out)


def _contrast_cell(run: dict) -> str:
    """The protocol's predicted WM-GM contrast, marked when it is in the low-contrast
    corner (an SPGR QC flag)."""
    c = run.get("wm_gm_contrast")
    if c is None:
        return "n/a"
    return f"{c:+.2f}" + (" (LOW)" if run.get("low_contrast") else "")


def subject_report(writer, subject: str, runs: list[dict], provenance: dict) -> str:
    """Write ``sub-X.html``; returns its path relative to the derivatives."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>phys-bids: sub-"
             f"{html.escape(subject)}</title><style>{_CSS}</style></head><body>",
             f"<h1>phys-bids report: sub-{html.escape(subject)}</h1>",
             "<h2>Summary</h2>",
             _table([(r["run"], r["sequence"], "yes" if r["in_training_space"] else "NO",
                      _contrast_cell(r), len(r["qc"]), len(r["warnings"])) for r in runs],
                    ("run", "sequence", "in training space", "predicted WM-GM contrast",
                     "QC flags", "warnings"))]
    for r in runs:
        parts.append(f"<h2>{html.escape(r['run'])}</h2>")
        parts.append("<h3>Acquisition parameters used</h3>")
        parts.append(_table([(k, v, r["sources"].get(k, "")) for k, v in r["params"].items()],
                            ("parameter (SI units)", "value", "source (origin:field)")))
        if r["qc"]:
            parts.append("<h3>QC flags</h3><ul>" + "".join(
                f"<li class='flag'>{html.escape(q)}</li>" for q in r["qc"]) + "</ul>")
        else:
            parts.append("<p class='ok'>No QC flags.</p>")
        if r["warnings"]:
            parts.append("<h3>Warnings</h3><ul>" + "".join(
                f"<li>{html.escape(w)}</li>" for w in r["warnings"]) + "</ul>")
        parts.append("<h3>Tissue volumes</h3>")
        mc = r.get("mc")
        if mc:
            parts.append(_table([(t, f"{v:.1f}", f"{mc[t]['median']:.1f}",
                                  f"{mc[t]['q1']:.1f} - {mc[t]['q3']:.1f}",
                                  f"{mc[t]['p2_5']:.1f} - {mc[t]['p97_5']:.1f}", mc[t]["n"])
                                 for t, v in r["volumes"].items()],
                                ("tissue", "volume (mL)", "MC median", "MC [Q1, Q3]",
                                 "MC [2.5, 97.5] %", "samples")))
        else:
            parts.append(_table([(t, f"{v:.1f}") for t, v in r["volumes"].items()],
                                ("tissue", "volume (mL)")))
        if r.get("qmri_fits"):
            parts.append(_fits_section(r["qmri_fits"]))
        parts.append(f"<p>Brain mask {r['brain_volume_ml']:.0f} mL; brain overlap with the "
                     f"template after registration (Dice) {r['registration_dice']:.3f}.</p>")
        for stepname, rel in r["figures"].items():
            parts.append(f"<h3>{html.escape(stepname)}</h3><img src='{html.escape(rel)}' "
                         f"alt='{html.escape(stepname)}'>")
    parts.append("<h2>Provenance</h2><pre>" + html.escape(json.dumps(provenance, indent=2))
                 + "</pre></body></html>")
    return writer.write_text(report_path(subject), "\n".join(parts) + "\n").name
