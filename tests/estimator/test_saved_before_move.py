"""Model directories and checkpoints written before issue 33's move of modules still load.

``tests/fixtures/model_08ec87d`` was written by the package at commit 08ec87d (the last
commit with the flat layout): a 30 x 40 model saved after 20 steps, its checkpoint at step
20, the transform of its training matrix, and the embedding of a run resumed from that
checkpoint to step 30, all computed by that commit's code."""

import shutil
from pathlib import Path

import numpy as np

from factembed import FactorizedEmbeddings

OLD = Path(__file__).resolve().parents[1] / "fixtures" / "model_08ec87d"


def test_a_model_saved_before_the_move_loads_and_transforms_the_same():
    X = np.load(OLD / "X.npy")
    model = FactorizedEmbeddings.load(OLD / "model")
    assert np.array_equal(model.embedding_, np.load(OLD / "embedding.npy"))
    # recomputed by 50 Adam steps of inference, which carry float rounding forward: equal to 1e-3 (the
    # thread layout of the process may differ from 08ec87d's run; in the full suite one row moved 4e-5)
    np.testing.assert_allclose(model.transform(X), np.load(OLD / "transform.npy"), rtol=0, atol=1e-3)


def test_a_checkpoint_written_before_the_move_resumes_to_the_same_embedding(tmp_path):
    X = np.load(OLD / "X.npy")
    shutil.copytree(OLD / "checkpoints", tmp_path / "checkpoints")
    est = FactorizedEmbeddings(gene_dim=8, hidden=(16, 8), n_steps=30, random_state=0, verbose=False)
    est.fit(X, checkpoint_dir=tmp_path / "checkpoints", checkpoint_every=10, resume=True)
    assert est.n_steps_ == 30 and est.resumed_from_ == 20   # it did read the old checkpoint
    np.testing.assert_allclose(est.embedding_, np.load(OLD / "embedding_resumed_30.npy"), rtol=1e-5, atol=1e-6)
