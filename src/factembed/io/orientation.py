"""Is a matrix the right way round?  A table written genes x samples and read as samples
x genes trains without complaint on the wrong problem ("1,000 samples x 200 genes").
:func:`orientation_problem` looks at the row and column ids and at the shape and says
what looks wrong, or ``None``."""

from __future__ import annotations

import re
from typing import Sequence

#: Ensembl gene ids (human ENSG, mouse ENSMUSG, other species ENS<code>G), optionally versioned
_ENSEMBL_GENE = re.compile(r"^ENS[A-Z]{0,6}G\d{6,}(\.\d+)?$", re.IGNORECASE)

#: Widely measured gene symbols (housekeeping genes, common markers and well-studied
#: genes), matched case-insensitively so that mouse spellings (``Actb``) count too.
#: Row ids of a samples x genes matrix are almost never among them.
KNOWN_SYMBOLS = frozenset(s.upper() for s in """
ACTB GAPDH B2M TUBB TUBA1B MALAT1 EEF1A1 RPLP0 RPL13A RPS18 RPS27A UBC YWHAZ HPRT1 TBP PPIA PGK1 GUSB
HMBS SDHA TFRC ALB INS GCG CD3E CD3D CD4 CD8A CD14 CD19 CD79A MS4A1 NKG7 GNLY LYZ FCGR3A PTPRC CST3
HLA-DRA HLA-A HLA-B EPCAM KRT8 KRT18 KRT19 VIM CDH1 CDH2 COL1A1 COL1A2 COL3A1 FN1 ACTA2 PECAM1 VWF
MKI67 TOP2A PCNA MCM2 CCNB1 CDK1 TP53 MYC KRAS EGFR ERBB2 BRCA1 BRCA2 PTEN RB1 CDKN2A APC PIK3CA AKT1
MTOR BCL2 BAX CASP3 ESR1 PGR AR FOXA1 GATA3 SOX2 POU5F1 NANOG PAX6 NES GFAP OLIG2 MBP SNAP25 SYP RBFOX3
MYOD1 MYOG MYF5 DES TNNT2 MYH7 NPPA PAX7 CDKN1A MDM2 ATM CHEK2 STAT3 JUN FOS EGR1 IL6 TNF IFNG IL2RA
FOXP3 CCR7 SELL CD34 KIT PROM1 THY1 ENG NT5E SPP1 MMP9 TIMP1 SERPINE1 HIF1A VEGFA KDR TGFB1 SMAD4 NOTCH1
HES1 WNT5A CTNNB1 AXIN2 LGR5 SHH GLI1 HBB HBA1 HBA2 APOE APOA1 TTR CP XIST UTY RPS4Y1 DDX3Y KDM5D NEAT1
""".split())

_SAMPLE_LIKE = (
    re.compile(r"^TCGA-[A-Z0-9]{2}-[A-Z0-9]{4}", re.IGNORECASE),      # TCGA barcodes
    re.compile(r"^[ACGTN]{8,}(-\d+)?$"),                                 # cell barcodes
    re.compile(r"^(sample|cell|patient|donor)[_\-.]?\d+", re.IGNORECASE),
)


def _fraction(ids: Sequence[str], test) -> float:
    ids = [str(x) for x in list(ids)[:1000]]
    return sum(1 for x in ids if test(x)) / len(ids) if ids else 0.0


def looks_like_gene(name: str) -> bool:
    name = name.strip()
    return bool(_ENSEMBL_GENE.match(name)) or name.upper() in KNOWN_SYMBOLS


def looks_like_sample(name: str) -> bool:
    return any(p.match(name.strip()) for p in _SAMPLE_LIKE)


def orientation_problem(samples: Sequence[str] | None, genes: Sequence[str] | None,
                        shape: tuple[int, int]) -> str | None:
    """What suggests that the rows are genes and the columns samples, or ``None``.

    Row ids that look like gene ids (Ensembl ids, or widely measured gene symbols), for
    at least a third of the first 1,000 rows; or column ids that look like sample ids
    (TCGA barcodes, cell barcodes) when the row ids do not; or, when neither says
    anything, a suspicious shape: fewer than 500 columns and at least five times as
    many rows (whole-transcriptome data has thousands of genes)."""
    n, m = int(shape[0]), int(shape[1])
    if samples is not None and len(samples):
        frac = _fraction(samples, looks_like_gene)
        if frac >= 1 / 3:
            example = next(str(s) for s in list(samples)[:1000] if looks_like_gene(str(s)))
            return f"the row ids look like gene ids ({frac:.0%} of them, e.g. {example!r})"
    gene_like_columns = genes is not None and len(genes) and _fraction(genes, looks_like_gene) >= 1 / 3
    if genes is not None and len(genes) and not gene_like_columns:
        frac = _fraction(genes, looks_like_sample)
        if frac >= 0.5 and not (samples is not None and _fraction(samples, looks_like_sample) >= 0.5):
            example = next(str(g) for g in list(genes)[:1000] if looks_like_sample(str(g)))
            return f"the column ids look like sample ids ({frac:.0%} of them, e.g. {example!r})"
    if not gene_like_columns and m < 500 and n >= 5 * m:
        return f"only {m:,} genes for {n:,} samples is unusual"
    return None
