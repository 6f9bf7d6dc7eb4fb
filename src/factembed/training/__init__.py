"""Training: what a fit trains on and for how long (:mod:`.recipes`), the start point
(:mod:`.warm_start`), the steps of the loop (:mod:`.step`), the loop itself (:mod:`.loop`), the
held-out entries and the stop rule (:mod:`.heldout`), checkpoints (:mod:`.checkpoint`) and the
resumable, guarded runner that the estimator and the data-parallel fit share (:mod:`.runner`)."""
