# The two GPU commands of 2026-11-26, run from the repository root on the device machines, and the install.
# OUT: where `variants train` writes the variant tars; WORK: its work folder (both may be anywhere).
OUT=${OUT:-runs/variants}; WORK=${WORK:-runs/variants-work}
# 1. 4 x H200 (asked for 4 x H100), two processes per GPU, 8.3 minutes each: eight target variants.
B=bucket_batches=50; L=label_smoothing=0.1
python -m training.zoo.variants train --pair bible-en-es-t5 --role target --out "$OUT" --work "$WORK" --minutes 8.3 \
    --devices 0,1,2,3 --keep-models 4 --variant a-bk $B --variant ls-bk $B $L --variant ls-lr2-bk $B $L lr=2e-3 \
    --variant ls-do3-bk $B $L arch.dropout_rate=0.3 \
    --variant e5d2-ls-bk $B $L arch.num_layers=5 arch.num_decoder_layers=2 \
    --variant deep-ls-bk $B $L arch.d_model=192 arch.d_ff=768 arch.num_heads=6 arch.num_layers=4 \
        arch.num_decoder_layers=4 arch.dropout_rate=0.2 \
    --variant ls2-bk $B label_smoothing=0.2 --variant b768-ls-bk $B $L batch_size=768 lr=1.6e-3
# 2. 1 x H100, two processes: the committed config (= b768-ls-bk) alone, no overrides, its own `minutes`, two seeds.
python -m training.zoo.variants train --pair bible-en-es-t5 --role target --out "$OUT" --work "$WORK" --devices 0,0 \
    --keep-models 0 --variant config --variant seed7 seed=7
# Installed (here, CPU): the b768-ls-bk target of command 1 with the shipped draft (its files from the first zoo run).
python -m training.zoo.variants assemble --pair bible-en-es-t5 --target "$OUT/target-b768-ls-bk.tar" \
    --draft runs/shipped-draft/draft-shipped --out runs/pair-b768
python -m training.zoo.finalize --from runs/pair-b768 --pairs bible-en-es-t5
