"""Gold answers as text: the conversion of a row's answer value and the GSM8K `####` convention.

`data.answer_format`:

- ``raw``: the value as text (see `answer_to_text`);
- ``gsm8k``: the text after the last ``####`` (GSM8K writes the worked solution, then ``#### 72``), stripped,
  with thousands-commas removed (``#### 1,234`` -> ``1234``); an answer without ``####`` is a `DataError`;
- ``auto`` (default): ``gsm8k`` when the answer text contains ``####``, else ``raw``.

Non-string values (parquet / csv / json numbers and lists) become text this way: an int ``42`` -> ``"42"``; a
float with an integral value ``3.0`` -> ``"3"`` (csv columns with a missing value turn ints into floats), other
floats by `repr` (``0.5`` -> ``"0.5"``); a bool -> ``"true"`` / ``"false"``; a one-element list -> its element's
text; other lists and dicts -> compact JSON. The raw value itself stays in `PromptRow.fields`.
"""

from __future__ import annotations

import json
import math

from creditrl.data.errors import DataError

ANSWER_FORMATS = ("auto", "raw", "gsm8k")
GSM8K_MARK = "####"


def answer_to_text(value) -> str:
    """The text of a non-null answer value (rules in the module docstring)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isfinite(value) and value == int(value):
            return str(int(value))
        return repr(value)
    if isinstance(value, (list, tuple)):
        if len(value) == 1:
            return answer_to_text(value[0])
        return json.dumps(list(value), ensure_ascii=False, separators=(",", ":"), default=str)
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    return str(value)


def gsm8k_final(text: str) -> str | None:
    """The GSM8K final answer: what follows the last '####', stripped, commas removed; None without '####'."""
    if GSM8K_MARK not in text:
        return None
    return text.rsplit(GSM8K_MARK, 1)[1].strip().replace(",", "")


def extract_answer(value, answer_format: str, where: str, field_desc: str) -> str:
    """The gold answer text of `value` per `answer_format`; `where` ("data file F, row i") and `field_desc`
    ("field 'answer' (data.answer_field)") go into the error messages."""
    text = answer_to_text(value)
    where = f"{where}: " if where else ""
    if answer_format == "raw":
        return text
    final = gsm8k_final(text)
    if final is None:
        if answer_format == "gsm8k":
            raise DataError(f"{where}{field_desc} has no '####' line, but data.answer_format=gsm8k takes the text "
                            f"after the last '####' (got {_clip(text)!r}). Fix: data.answer_format: raw (or auto), or "
                            f"point data.answer_field at the GSM8K solution text.")
        return text
    if not final:
        raise DataError(f"{where}{field_desc} has nothing after its last '####' ({_clip(text)!r}). Fix: write the "
                        f"final answer after '####', or set data.answer_format: raw.")
    return final


def _clip(s: str, n: int = 80) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."
