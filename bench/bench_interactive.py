"""Size and load time of the interactive embedding page (factembed.plot.page) at a given
number of samples.

Planted data: TCGA-shaped tables without training a model (the page does not care where the
embedding came from): ``n`` samples in 33 clusters of a 2-D embedding, names like TCGA
barcodes, a 33-class label column and a continuous column; a gene embedding of 19,962 genes x
50 (the gene view, with 10 neighbours per gene); 500 new samples.  The page is built and
written (timed), then opened in headless Chromium (Debian's chromium + chromedriver, through
selenium): the load time is bokeh's own "document idle at N ms" (from navigation start to the
first complete render) and the wall time of ``driver.get`` until then.

    python bench/bench_interactive.py --samples 10000,100000
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def page_inputs(n: int, m: int = 19_962, gene_dim: int = 50, n_new: int = 500, seed: int = 0):
    """What the page draws for a TCGA-shaped model: n sample positions in 33 planted clusters
    (the 2-D latent positions of :func:`factembed.planted.make_planted`, scaled by 4), names,
    annotations, a random gene table and n_new new samples (no expression matrix)."""
    from factembed.planted import make_planted
    P = make_planted(n, 1, n_groups=33, latent_dim=2, scatter=0.15, seed=seed)
    rng = np.random.default_rng(seed + 1)
    Z, lab = 4.0 * P.latent.astype(np.float64), P.labels
    names = [f"TCGA-{i // 10000:02d}-{i % 10000:04d}-01A" for i in range(n)]
    ann = {"cancer type": np.asarray([f"TYPE{k:02d}" for k in lab]), "purity": rng.uniform(0, 1, n)}
    G = rng.normal(size=(m, gene_dim)).astype(np.float32)
    genes = [f"GENE{j}" for j in range(m)]
    n_new = min(n_new, n)
    new = {"Z": Z[:n_new] + rng.normal(0, 0.2, (n_new, 2)), "samples": [f"NEW-{i}" for i in range(n_new)]}
    return Z, names, ann, G, genes, new


def load_time(path: Path) -> tuple[float, float | None]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900",
              "--enable-unsafe-swiftshader", "--use-angle=swiftshader"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    try:
        t0 = time.perf_counter()
        driver.get(path.as_uri())
        idle = None
        while time.perf_counter() - t0 < 300 and idle is None:
            for e in driver.get_log("browser"):
                if e["level"] in ("SEVERE", "ERROR"):
                    raise RuntimeError(f"console error: {e['message']}")
                hit = re.search(r"document idle at (\d+) ms", e["message"])
                if hit:
                    idle = float(hit.group(1)) / 1000
            time.sleep(0.05)
        return time.perf_counter() - t0, idle
    finally:
        driver.quit()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", default="10000,100000", help="sample counts, comma separated")
    p.add_argument("--keep", default=None, help="directory to keep the pages in (default: a temporary one)")
    p.add_argument("--genes", type=int, default=19_962, help="genes in the page's gene table")
    p.add_argument("--no-browser", action="store_true", help="build the pages only (no load time in chromium)")
    p.add_argument("--quick", action="store_true", help="300 samples, 500 genes, no browser (smoke test)")
    args = p.parse_args(argv)
    if args.quick:
        args.samples, args.genes, args.no_browser = "300", 500, True
    from factembed.plot.page import embedding_page

    out = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="fe_page_"))
    out.mkdir(parents=True, exist_ok=True)
    print("samples  genes  new  size_MB  build_s  load_wall_s  bokeh_idle_s")
    for n in (int(v) for v in args.samples.split(",")):
        Z, names, ann, G, genes, new = page_inputs(n, args.genes)
        path = out / f"page_{n}.html"
        t0 = time.perf_counter()
        embedding_page(Z, names, ann, gene_embedding=G, genes=genes, new=new, path=path, title=f"planted {n:,}")
        build = time.perf_counter() - t0
        wall, idle = (float("nan"), None) if args.no_browser else load_time(path)
        print(f"{n:>7,}  {len(genes):,}  {len(new['Z'])}  {path.stat().st_size / 1e6:7.2f}  {build:7.1f}  "
              f"{wall:11.1f}  {idle if idle is not None else float('nan'):12.1f}", flush=True)
    if not args.keep:
        shutil.rmtree(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
