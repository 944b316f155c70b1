"""The group report: volumes by site, site-effect plot, and the HTML page."""

from __future__ import annotations

__all__ = ["volumes_plot", "site_effect_plot", "group_report"]


def volumes_plot(rows: list[dict]) -> bytes:
    import matplotlib

    from ..workflows.report import png_bytes

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sites = sorted({r["site"] for r in rows})
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.4), dpi=80)
    for ax, t in zip(axes, ("GM", "WM", "CSF"), strict=True):
        for i, s in enumerate(sites):
            v = [float(r[f"{t}_ml"]) for r in rows if r["site"] == s]
            ax.plot([i] * len(v), v, "o", alpha=0.7)
        by_subject: dict[str, list] = {}
        for r in rows:
            by_subject.setdefault(r["participant_id"], []).append(
                (sites.index(r["site"]), float(r[f"{t}_ml"])))
        for pts in by_subject.values():
            if len(pts) > 1:
                pts.sort()
                ax.plot(*zip(*pts, strict=True), "-", color="grey", lw=0.6)
        ax.set_xticks(range(len(sites)), sites, rotation=20, fontsize=7)
        ax.set_title(f"{t} (mL)")
    return png_bytes(fig)


def site_effect_plot(effects: dict) -> bytes | None:
    """Share of volume variance explained by site (after subject when there are
    travelling subjects, else one-way), per tissue: physics model raw, after ComBat,
    classical segmentation. None when no site statistic exists."""
    import matplotlib

    from ..workflows.report import png_bytes

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def value(e):
        if not e:
            return None
        v = e.get("partial_eta2_site_given_subject")
        return e.get("eta2_site") if v is None else v

    tissues = ("GM", "WM", "CSF")
    series = {"phys-bids": [value(effects["tissues"][t]) for t in tissues],
              "phys-bids + ComBat": [value(effects["tissues"][t].get("combat"))
                                     for t in tissues],
              "classical (Atropos)": [value(effects["tissues"][t].get("classical"))
                                      for t in tissues]}
    series = {k: v for k, v in series.items() if any(x is not None for x in v)}
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6, 3), dpi=80)
    width = 0.8 / len(series)
    for i, (name, vals) in enumerate(series.items()):
        xs = [k + i * width for k in range(len(tissues))]
        ax.bar(xs, [0 if v is None else v for v in vals], width, label=name)
    ax.set_xticks([k + width * (len(series) - 1) / 2 for k in range(len(tissues))], tissues)
    ax.set_ylabel("variance explained by site")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    return png_bytes(fig)


def group_report(effects: dict, site_plot: bool = False) -> str:
    import html

    rows = []
    for t, e in effects["tissues"].items():
        w = e["within_subject"]
        eta = e["eta2_site"]
        peta = e["partial_eta2_site_given_subject"]
        def fmt(x, f):
            return "n/a" if x is None else format(x, f)
        def cov(w):
            if not w:
                return "n/a"
            lo, hi = w.get("ci95_cov_x1e3", (None, None))
            return f"{w['mean_cov_x1e3']:.1f}" + ("" if lo is None else
                                                  f" [{lo:.1f}, {hi:.1f}]")
        cb = e.get("combat") or {}
        cl = e.get("classical") or {}
        rows.append(f"<tr><td>{t}</td><td>{fmt(eta, '.3f')}</td><td>{fmt(peta, '.3f')}</td>"
                    f"<td>{cov(w)}</td><td>{fmt(cb.get('eta2_site'), '.3f')}</td>"
                    f"<td>{fmt(cb.get('partial_eta2_site_given_subject'), '.3f')}</td>"
                    f"<td>{fmt(cl.get('eta2_site'), '.3f')}</td>"
                    f"<td>{fmt(cl.get('partial_eta2_site_given_subject'), '.3f')}</td>"
                    f"<td>{cov(cl.get('within_subject'))}</td></tr>")
    pad = effects.get("proxy_a_distance") or {}
    pairs = sorted({p for d in pad.values() for p in d})
    arows = "".join(f"<tr><td>{html.escape(p)}</td>" + "".join(
        f"<td>{pad[k][p]:.2f}</td>" if p in pad[k] else "<td>n/a</td>" for k in pad) + "</tr>"
        for p in pairs)
    ahead = "".join(f"<th>{html.escape(k)}</th>" for k in pad)
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>phys-bids group</title>"
            "<style>body{font-family:sans-serif;max-width:1000px;margin:auto}td,th{border:1px "
            "solid #bbb;padding:2px 8px}table{border-collapse:collapse}</style></head><body>"
            f"<h1>phys-bids group report</h1><p>{effects['scans']} scans, "
            f"{effects['subjects']} subjects, sites: "
            f"{html.escape(', '.join(effects['sites']))}</p>"
            "<h2>Volumes by site</h2><img src='volumes_by_site.png' alt='volumes by site'>"
            "<p>Lines join the scans of one subject.</p><h2>Site effects</h2><table><tr>"
            "<th>tissue</th><th>variance explained by site</th><th>... after subject</th>"
            "<th>within-subject CoV x10^3 [95 % CI]</th><th>after ComBat: by site</th>"
            "<th>... after subject</th><th>classical (Atropos): by site</th>"
            "<th>... after subject</th><th>... within-subject CoV x10^3</th></tr>"
            + "".join(rows) + "</table>"
            + ("<img src='site_effects.png' alt='variance explained by site'><p>Variance "
               "explained by site after subject (travelling subjects), else one-way.</p>"
               if site_plot else "")
            + "<p>ComBat volumes (group/volumes_combat.tsv) are shown beside the raw ones, never "
            "instead of them.</p><h2>Proxy A-distance between sites</h2>"
            "<p>0: a linear classifier cannot tell the sites' brain-tissue intensities apart; "
            "2: it always can.</p>"
            + (f"<table><tr><th>sites</th>{ahead}</tr>{arows}</table>" if pad else
               "<p>n/a (needs two sites with two scans each)</p>") + _bridge_html(effects)
            + "</body></html>\n")


def _bridge_html(effects: dict) -> str:
    import html

    b = effects.get("bridge")
    if not b:
        return ""
    names = {"classical_uncorrected": "classical (Atropos), uncorrected",
             "classical_linear": "classical, linear correction (training pairs)",
             "physics_as_processed": "physics model, sidecar parameters",
             "physics_linear": "physics model, linear correction",
             "physics_bridged": "physics model, bridged (searched parameters)"}
    ev = b["test_mean_abs_pct_difference"]
    rows = "".join(f"<tr><td>{names.get(k, k)}</td><td>{v['mean_pct']:.2f}</td>"
                   f"<td>{v['GM_pct']:.2f}</td><td>{v['WM_pct']:.2f}</td></tr>"
                   for k, v in ev.items())
    side = b.get("sidecars")
    return (f"<h2>Bridging {html.escape(b['groups']['A'])} &rarr; "
            f"{html.escape(b['groups']['B'])}</h2><p>Searched on the training pairs: "
            f"{html.escape(b['parameter']['A'])} {b['chosen']['A']:.3g} (A), "
            f"{html.escape(b['parameter']['B'])} {b['chosen']['B']:.3g} (B)"
            + (f"; the sidecars say {side['A']:.3g} and {side['B']:.3g}" if side else "")
            + ". Written as group/bridge_protocol.json for the participant level.</p>"
            "<img src='bridge_contour.png' alt='bridging search'>"
            "<table><tr><th>test pairs: mean |% difference| A vs B</th><th>GM+WM</th>"
            f"<th>GM</th><th>WM</th></tr>{rows}</table>")
