"""The scikit-learn estimator checks that :class:`~factembed.FactorizedEmbeddings` fails by
design, with the reason of each (for scikit-learn's ``expected_failed_checks``, >= 1.6)."""

from __future__ import annotations

from typing import Any

#: scikit-learn estimator checks that FactorizedEmbeddings fails by design, with the reason
_EXPECTED_FAILED_CHECKS = {
    "check_transformer_general": (
        "fit_transform returns the embedding learned jointly with the model during training "
        "(transductive), transform embeds samples into the frozen model by inference (inductive): "
        "they agree only up to the inference error, not within scikit-learn's atol=1e-2"),
    "check_transformer_data_not_an_array": (
        "same check as check_transformer_general on a non-array input: fit_transform (learned embedding) "
        "and transform (inference) differ by design"),
}


def sklearn_expected_failed_checks(estimator: Any = None) -> dict[str, str]:
    """The scikit-learn estimator checks that :class:`FactorizedEmbeddings` fails by design,
    each with its reason, for scikit-learn's own mechanism (>= 1.6)::

        check_estimator(FactorizedEmbeddings(...), expected_failed_checks=sklearn_expected_failed_checks())
        @parametrize_with_checks([...], expected_failed_checks=sklearn_expected_failed_checks)
    """
    return dict(_EXPECTED_FAILED_CHECKS)
