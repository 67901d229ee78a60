"""utils/evaluation.py: the results table and files (scoring a split is tested through evaluate.py and the demo)."""
import json
import math

from utils.evaluation import VERDICTS, json_safe, results_text, write_results
from utils.metrics import METRIC_NAMES

RESULTS = {"crack": dict.fromkeys(METRIC_NAMES, 0.5), "overall": {**dict.fromkeys(METRIC_NAMES, 0.75),
                                                                   "aupro": math.nan}}


def test_text_files_and_nan(tmp_path):
    text = results_text(RESULTS, "my title")
    overall = next(line for line in text.splitlines() if line.startswith("overall"))
    assert text.startswith("\nmy title\n") and overall.split()[-1] == "-"  # nan AUPRO
    assert "no threshold" in text.splitlines()[-1]  # the verdicts follow the table
    assert json_safe(RESULTS)["overall"]["aupro"] is None
    write_results(RESULTS, tmp_path / "out", {"size": 32})
    assert (tmp_path / "out" / "metrics.csv").read_text().splitlines()[0] == ",".join(["type", *METRIC_NAMES,
                                                                                     *VERDICTS])
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["checkpoint"] == {"size": 32} and saved["results"]["crack"]["image_auroc"] == 0.5
