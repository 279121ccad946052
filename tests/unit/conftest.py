"""Session fixtures of the unit tests that compare against InternLM's original code: XTuner's
modeling files, the ``sentencepiece`` package and a SentencePiece model trained like InternLM's."""

from tests.support.hf_folders import internlm_sentencepiece_model, sentencepiece, xtuner_modelings

__all__ = ["internlm_sentencepiece_model", "sentencepiece", "xtuner_modelings"]
