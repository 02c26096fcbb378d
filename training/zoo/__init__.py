"""Training of the embedded zoo pairs: tokenizers (CPU), models (GPU, Lightning), finalize (CPU).

1. ``python -m training.zoo.build_tokenizers``: one tokenizer per pair from its train split, shipped.
2. ``python -m training.zoo.train_all --out OUT --minutes 7 --devices 0,1``: all six models at once on
   GPUs, each evaluated and packed into ``OUT/<pair>.tar`` plus ``OUT/eval.tar``.
3. ``python -m training.zoo.finalize --from OUT``: unpack into ``specref/zoo/pairs``, score with
   sacreBLEU / rouge-score, check the quality bars, write ``card.json`` and ``MODEL_CARD.md``.
"""
