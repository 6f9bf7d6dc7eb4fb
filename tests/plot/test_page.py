"""The interactive embedding page: what it holds, where it is written, and how it behaves
in a real browser (Debian's headless Chromium driven by selenium with the system
chromedriver; skipped only when they are not installed)."""
import shutil
import sys
import time

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("bokeh", reason="bokeh (the interactive extra) is not installed: pip install -e '.[all]'")

from factembed.plot import page as ia  # noqa: E402
from factembed.cli import main  # noqa: E402
from factembed.estimator.genes import nearest_genes  # noqa: E402
from factembed.io import ExpressionData, write_expression  # noqa: E402

FAST = ["--steps", "150", "--gene-dim", "8", "--hidden", "16,8", "--infer-steps", "20", "--seed", "0", "--quiet"]


# --------------------------------------------------------------------------------------
# without a browser
# --------------------------------------------------------------------------------------

def test_nearest_genes_are_similar_genes(fitted_small):
    fe, _, _ = fitted_small
    nb = nearest_genes(fe.gene_embedding_, k=7, block=64)     # several blocks
    assert nb.shape == (fe.n_features_in_, 7)
    for j in (0, 5, 123, fe.n_features_in_ - 1):
        assert list(nb[j]) == list(fe.similar_genes(j, k=7).index)


def test_categorical_order_and_class_cap():
    codes, classes = ia._categorical(["48h", "0h", "24h", "0h"])
    assert classes == ["0h", "24h", "48h"] and list(codes) == [2, 0, 1, 0]   # time course in time order
    many = [f"c{i % 80}" for i in range(400)] + ["c1"] * 50
    codes, classes = ia._categorical(many)
    assert len(classes) == ia.MAX_CLASSES and classes[-1] == "other" and "c1" in classes


def test_page_is_self_contained_and_checks_inputs(tmp_path, fitted_small):
    from factembed.plot import interactive

    fe, _, labels = fitted_small
    layout = interactive(fe, labels=labels, path=tmp_path / "p.html")
    assert layout.name == "fe_layout"
    html = (tmp_path / "p.html").read_text()
    assert "<script src=" not in html.replace("<script src=\"data:", "")   # no CDN, no other file
    assert "cdn.bokeh.org" not in html and "Bokeh.embed" in html
    with pytest.raises(ValueError, match="labels for 240 training samples"):
        interactive(fe, labels=labels[:10])
    with pytest.raises(ValueError, match="dims=.*dimensions 0 to 1"):
        interactive(fe, dims=(0, 2))
    with pytest.raises(ValueError, match="color_by='nope'"):
        interactive(fe, labels=labels, color_by="nope")


def test_without_bokeh_fit_skips_the_page_and_plot_says_how_to_install(tmp_path, planted_data, monkeypatch, capsys):
    X, labels = planted_data
    data = ExpressionData(X=np.abs(X[:60, :40]), samples=np.array([f"s{i}" for i in range(60)]),
                          genes=np.array([f"g{j}" for j in range(40)]), labels=np.array([str(v) for v in labels[:60]]))
    write_expression(tmp_path / "t.h5", data)
    monkeypatch.setitem(sys.modules, "bokeh", None)          # import bokeh -> ImportError
    from factembed.errors import FEWarning
    with pytest.warns(FEWarning, match=r"embedding.html not written: .*pip install 'factembed\[interactive\]'"):
        assert main(["fit", str(tmp_path / "t.h5"), "-o", str(tmp_path / "m"), "--checkpoint-every", "0", *FAST]) == 0
    assert not (tmp_path / "m" / "embedding.html").exists() and (tmp_path / "m" / "embedding.png").exists()
    capsys.readouterr()
    assert main(["plot", "embedding", str(tmp_path / "m"), "-o", str(tmp_path / "p.html")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "factembed: error: the interactive page needs bokeh: pip install 'factembed[interactive]'"


def test_cli_fit_transform_plot_write_pages(tmp_path, planted_data, capsys):
    X, labels = planted_data
    X = np.abs(X[:80, :60])
    samples, genes = np.array([f"s{i}" for i in range(80)]), np.array([f"g{j}" for j in range(60)])
    lab = np.array([f"c{v}" for v in labels[:80]])
    write_expression(tmp_path / "t.h5", ExpressionData(X=X, samples=samples, genes=genes, labels=lab))
    write_expression(tmp_path / "new.csv", ExpressionData(X=X[:5], samples=np.array([f"n{i}" for i in range(5)]),
                                                          genes=genes, labels=lab[:5]))
    m = tmp_path / "model"
    assert main(["fit", str(tmp_path / "t.h5"), "-o", str(m), "--checkpoint-every", "0", *FAST]) == 0
    assert (m / "embedding.html").stat().st_size > 100_000
    assert f"wrote {m / 'embedding.html'}" in capsys.readouterr().out
    assert main(["transform", str(m), str(tmp_path / "new.csv"), "-o", str(tmp_path / "e.csv"),
                 "--html", str(tmp_path / "new.html"), "--quiet"]) == 0
    html = (tmp_path / "new.html").read_text()
    assert "fe_new_samples" in html and "nearest training samples" in html
    assert main(["plot", "embedding", str(m), str(tmp_path / "e.csv"), "-o", str(tmp_path / "again.html")]) == 0
    assert "fe_new_samples" in (tmp_path / "again.html").read_text()
    capsys.readouterr()
    assert main(["plot", "embedding", str(m), str(tmp_path / "missing.csv")]) == 1
    assert "missing.csv: no such file" in capsys.readouterr().err
    assert main(["fit", str(tmp_path / "t.h5"), "-o", str(tmp_path / "m2"), "--checkpoint-every", "0",
                 "--no-html", *FAST]) == 0
    assert not (tmp_path / "m2" / "embedding.html").exists()


def test_tl_interactive_uses_obs_columns(tmp_path, planted_data):
    ad = pytest.importorskip("anndata")
    import factembed

    X, labels = planted_data
    a = ad.AnnData(np.abs(X[:60, :40]), obs=pd.DataFrame({"cell_type": [f"t{v}" for v in labels[:60]],
                                                          "depth": np.linspace(0, 1, 60)},
                                                         index=[f"c{i}" for i in range(60)]))
    fe = factembed.tl.fe(a, n_steps=100, gene_dim=4, hidden=(8,), verbose=False)
    layout = factembed.tl.interactive(a, fe, path=tmp_path / "a.html")
    select = layout.select_one({"name": "fe_color_select"})
    assert select.options[:2] == ["cell_type", "depth"]
    src = layout.select_one({"name": ia.TRAIN_SOURCE})
    assert list(src.data["sample"][:2]) == ["c0", "c1"]
    assert (tmp_path / "a.html").exists()


# --------------------------------------------------------------------------------------
# in a browser
# --------------------------------------------------------------------------------------

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")

# every Bokeh view of the page, found once; pixel position of a data point of a named figure
_VIEWS = """
function walk(v, out) { out.push(v); for (const c of (v.child_views || [])) walk(c, out); return out; }
window._fe_views = Object.values(Bokeh.index).flatMap((v) => walk(v, []));
"""
_PIXEL = """
const [name, x, y] = arguments;
const v = window._fe_views.find((v) => v.model.name === name);
const r = v.el.getBoundingClientRect();
return [r.left + v.frame.x_scale.compute(x), r.top + v.frame.y_scale.compute(y)];
"""
_TOOLTIPS = """
function walk(n, out) {
  if (n.shadowRoot) walk(n.shadowRoot, out);
  for (const c of (n.children || [])) walk(c, out);
  if (n.classList && [...n.classList].some((c) => c.toLowerCase().includes('tooltip'))) out.push(n.innerText);
  return out;
}
return walk(document.body, []).join('\\n');
"""
_FIND = """
const [selector] = arguments;
function walk(n) {
  const hit = n.querySelector && n.querySelector(selector); if (hit) return hit;
  for (const c of (n.querySelectorAll ? n.querySelectorAll('*') : [])) if (c.shadowRoot) { const h = walk(c.shadowRoot); if (h) return h; }
  return null;
}
return walk(document);
"""


@pytest.fixture(scope="module")
def page(tmp_path_factory, fitted_small):
    """One page (training samples with a label and a continuous column, 3 new samples)
    open in one headless Chromium for the whole module."""
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: pip install -e '.[dev]'")
    from selenium.webdriver.chrome.service import Service

    fe, X, labels = fitted_small
    from factembed.plot import interactive
    n = len(labels)
    names = [f"sample-{i}" for i in range(n)]
    ann = {"depth": np.linspace(0.0, 1.0, n)}
    new = {"Z": fe.embedding_[[3, 50, 100]] + 0.01, "samples": ["NEW-A", "NEW-B", "NEW-C"]}
    path = tmp_path_factory.mktemp("page") / "page.html"
    interactive(fe, labels=[f"type{v}" for v in labels], annotations=ann, samples=names, new=new, path=path,
                label_name="cancer type")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900",
              "--enable-unsafe-swiftshader", "--use-angle=swiftshader"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        driver.get(path.as_uri())
        for _ in range(100):                      # until bokeh has rendered the document
            if driver.execute_script("return window.Bokeh && Bokeh.documents.length > 0 && "
                                     "Object.keys(Bokeh.index).length > 0"):
                break
            time.sleep(0.1)
        time.sleep(0.5)
        log = driver.get_log("browser")
        driver.execute_script(_VIEWS)
        yield {"driver": driver, "log": log, "fe": fe, "names": names, "new": new, "path": path}
    finally:
        driver.quit()


def _js_model(driver, name, expr):
    return driver.execute_script(f"const m = Bokeh.documents[0].get_model_by_name({name!r}); return {expr};")


def _hover(driver, figure, x, y):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    px = driver.execute_script(_PIXEL, figure, float(x), float(y))
    ab = ActionBuilder(driver)
    ab.pointer_action.move_to_location(int(round(px[0])), int(round(px[1])))
    ab.perform()
    time.sleep(0.4)
    text = driver.execute_script(_TOOLTIPS)
    ActionChains(driver).move_by_offset(0, 0)
    return text


def _screenshot(driver, path=None):
    from PIL import Image
    import io
    png = driver.get_screenshot_as_png()
    if path is not None:
        path.write_bytes(png)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64)


def test_loads_offline_without_console_errors_and_renders(page):
    errors = [e for e in page["log"] if e["level"] in ("SEVERE", "ERROR")]
    assert errors == []
    assert any("document idle" in e["message"] for e in page["log"])     # bokeh finished rendering
    img = _screenshot(page["driver"], page["path"].with_suffix(".png"))
    assert img.std() > 20                                                 # not a blank page
    # the sample plot's frame holds coloured points: many distinct colours in it
    assert len(np.unique(img[100:600, 60:600].reshape(-1, 3), axis=0)) > 50


def test_hover_shows_the_sample_name_and_its_annotations(page):
    d, fe = page["driver"], page["fe"]
    Z = fe.embedding_
    # the training sample farthest from every other point (and from the new samples)
    dist = np.linalg.norm(Z[:, None] - np.vstack([Z, page["new"]["Z"]])[None], axis=2)
    dist[np.arange(len(Z)), np.arange(len(Z))] = np.inf
    i = int(np.argmax(dist.min(axis=1)))
    text = _hover(d, "fe_sample_plot", Z[i, 0], Z[i, 1])
    assert page["names"][i] in text
    assert "cancer type" in text and "depth" in text


def test_switching_the_colour_column_changes_the_legend(page):
    d = page["driver"]
    legend = "m.items.map((it) => it.label.value)"
    before = _js_model(d, "fe_legend", legend)
    assert before[:4] == ["type0", "type1", "type2", "type3"] and before[-1] == "new samples"
    shot_before = _screenshot(d)
    select = d.execute_script(_FIND, "select")
    d.execute_script("arguments[0].value = 'depth'; arguments[0].dispatchEvent(new Event('change'));", select)
    time.sleep(0.4)
    after = _js_model(d, "fe_legend", legend)
    assert after[0].startswith("depth: 0 (dark) to 1 (light)") and after[-1] == "new samples"
    assert np.abs(_screenshot(d) - shot_before).sum() > 0                 # the page was redrawn
    d.execute_script("arguments[0].value = 'cancer type'; arguments[0].dispatchEvent(new Event('change'));", select)
    time.sleep(0.2)
    assert _js_model(d, "fe_legend", legend) == before


def test_gene_search_highlights_the_gene_and_its_neighbours(page):
    from selenium.webdriver.common.keys import Keys

    d, fe = page["driver"], page["fe"]
    gene = 123
    box = d.execute_script(_FIND, "input[placeholder='gene name']")
    box.click()
    box.send_keys(str(gene))
    box.send_keys(Keys.ENTER)
    box.send_keys(Keys.TAB)
    time.sleep(0.4)
    chosen = _js_model(d, "fe_gene_search", "m.value")
    assert chosen == str(gene)
    selected = _js_model(d, ia.GENE_SOURCE, "Array.from(m.selected.indices)")
    assert selected == [gene] + [int(j) for j in fe.similar_genes(gene, k=10).index]
    labels = _js_model(d, "fe_gene_highlight", "Array.from(m.data.gene)")
    assert labels == [str(j) for j in selected]
    assert _js_model(d, "fe_gene_found", "m.text") == "nearest genes: " + ", ".join(labels[1:])


def test_new_samples_have_their_own_marker_and_nearest_training_samples(page):
    d, fe = page["driver"], page["fe"]
    assert _js_model(d, "fe_new", "m.glyph.marker.value") == "triangle"
    assert _js_model(d, ia.NEW_SOURCE, "Array.from(m.data.sample)") == ["NEW-A", "NEW-B", "NEW-C"]
    z = page["new"]["Z"][1]
    text = _hover(d, "fe_sample_plot", z[0], z[1])
    assert "NEW-B" in text and "nearest training samples" in text
    assert page["names"][50] in text                                  # the sample it was placed beside


def test_a_click_on_a_legend_entry_hides_and_shows_its_class(page):
    d = page["driver"]

    def click(label):                  # the legend's DOM is redrawn after each click: find it anew
        entry = d.execute_script("""
            const v = window._fe_views.find((v) => v.model.name === 'fe_sample_plot');
            const lv = [...v.renderer_views.values()].find((r) => r.model.type === 'Legend');
            const hits = [...lv.shadow_el.querySelectorAll('*')].filter((e) => e.textContent.trim() === arguments[0]);
            return hits.length ? hits[hits.length - 1] : null;
        """, label)
        assert entry is not None, label
        entry.click()
        time.sleep(0.2)

    name = "fe_class::cancer type::type2"
    assert _js_model(d, name, "m.visible") is True
    click("type2")
    assert _js_model(d, name, "m.visible") is False
    assert _js_model(d, "fe_class::cancer type::type1", "m.visible") is True     # the other classes stay
    click("type2")
    assert _js_model(d, name, "m.visible") is True
