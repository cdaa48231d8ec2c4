"""Prognosis (HECKTOR Task 2): recurrence-free survival from a segmentation backbone's pooled encoder
features, adapted CT -> CT+PET -> CT+PET+EHR with the PEMMA adapters.

Modules: :mod:`~pemma.survival.endpoints` (endpoint and clinical CSVs, matching to image cases),
:mod:`~pemma.survival.clinical` (clinical encoder), :mod:`~pemma.survival.losses` and
:mod:`~pemma.survival.heads` (Cox, MTLR), :mod:`~pemma.survival.metrics` (C-index, bootstrap, Kaplan–Meier,
log-rank), :mod:`~pemma.survival.model` (pooled features, prognosis model), :mod:`~pemma.survival.data`
(preprocessed centre crops), :mod:`~pemma.survival.runs` (run folders), :mod:`~pemma.survival.probe` (the head
solved on frozen features, penalty by inner CV), :mod:`~pemma.survival.training`
(``train_survival``, ``adapt_survival``) and :mod:`~pemma.survival.evaluate` (``evaluate_survival``,
``predict_survival``). The lesion-feature chain: :mod:`~pemma.survival.lesion` (volumes and PET uptake in the
model's own segmentation), :mod:`~pemma.survival.coxnet` (ridge Cox, penalty by inner CV),
:mod:`~pemma.survival.chain` and :mod:`~pemma.survival.chain_run` (``survival_chain``). The CLI is
``pemma survival`` (:mod:`pemma.cli.survival`).
"""
