"""``python -m jinterp.nn._onednn``: build the oneDNN convolution library now (e.g. at install) and say where."""

from jinterp.nn import _onednn

if __name__ == "__main__":
    ok = _onednn.available()
    print(f"oneDNN convolutions available: {ok}; library: {_onednn.build() if ok else '-'}; "
          f"build cost this run: {_onednn.build_cost or 'cached'}")
    raise SystemExit(0 if ok else 1)
