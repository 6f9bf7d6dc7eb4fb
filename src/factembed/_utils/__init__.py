"""Base utilities of the whole package: atomic files and checksums (:mod:`.files`), input
checks shared by the estimator, the readers and the sources (:mod:`.validation`).  They import
nothing of factembed but :mod:`factembed.errors`."""
