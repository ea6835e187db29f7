"""Write streamrnn/data/sample_stream.jsonl: a deterministic keyed Mackey-Glass recorded stream.

4 sensors (keys "mg-0".."mg-3"), each a Mackey-Glass series with its own delay tau and phase,
standardised; 750 records per key, interleaved round-robin (3000 records). Each record:
{"ts": T, "key": "mg-k", "value": {"key": "mg-k", "x": x_t, "dx": x_t - x_{t-1}, "y": x_{t+1}}}
so the target is the next value of the same key. Every 97th record is damaged in one of five
ways (bad JSON, missing field, non-numeric, non-finite, bad key type) to exercise the
dead-letter path: 30 bad records, 2970 good ones.
"""

import json
import os

from streamrnn.datasets import mackey_glass

N_PER_KEY = 750
TAUS = (17, 19, 23, 30)


def records():
    series = []
    for k, tau in enumerate(TAUS):
        s = mackey_glass(N_PER_KEY + 2 + 37 * k, tau=tau)[37 * k :]
        s = (s - s.mean()) / s.std()
        series.append(s)
    out = []
    n = 0
    for t in range(1, N_PER_KEY + 1):
        for k in range(len(TAUS)):
            s = series[k]
            key = f"mg-{k}"
            value = {
                "key": key,
                "x": round(float(s[t]), 12),
                "dx": round(float(s[t] - s[t - 1]), 12),
                "y": round(float(s[t + 1]), 12),
            }
            line = {"ts": round(1_700_000_000 + 0.01 * n, 3), "key": key, "value": value}
            n += 1
            if n % 97 == 0:
                kind = (n // 97) % 5
                if kind == 0:
                    out.append(f'{{"ts": {line["ts"]}, "key": "{key}", "value": {{"key": "{key}", "x": 0.1,')
                    continue
                if kind == 1:
                    del value["dx"]
                elif kind == 2:
                    value["x"] = "n/a"
                elif kind == 3:
                    value["x"] = "NaN"
                else:
                    value["key"] = [k]
            out.append(json.dumps(line, separators=(",", ":")))
    return out


def main():
    path = os.path.join(os.path.dirname(__file__), "..", "streamrnn", "data", "sample_stream.jsonl")
    lines = records()
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    print(f"wrote {len(lines)} records to {os.path.normpath(path)}")


if __name__ == "__main__":
    main()
