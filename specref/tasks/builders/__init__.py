"""Reproducible builders of the shipped task splits: ``python -m specref.tasks.builders.<task> --out DIR``.

Each builder writes ``<out>/<task>/{train,validation,test}.jsonl.gz`` with gzip mtime 0 and no stored file
name, so the bytes depend only on the input data and the code, and updates ``<out>/CHECKSUMS.sha256``.
``--check`` compares the freshly built files with the checksums recorded in the package.
"""
