"""Text safety classifier for the under-16 law: normalize, detect language, apply the lexicon.

Public entry points are re-exported by ``tasks.compliance_text``.
"""
