"""``python -m superpos browse``: write a static HTML feature browser for a dictionary."""
from __future__ import annotations

from superpos.cli.common import positive


def register(sub) -> None:
    """Add ``superpos browse`` to the subcommands."""
    p = sub.add_parser("browse", help="write a static HTML feature browser for a dictionary (open OUT/index.html)",
                       description="Encode a store's rows with a dictionary and write a static site: an index of "
                                   "features sortable by frequency, max activation and max |cos| to other atoms, with "
                                   "a search box by token; a page per feature with its top-activating contexts "
                                   "(tokens coloured by activation), an activation histogram, the tokens it promotes "
                                   "and suppresses through the unembedding, and its nearest atoms and token "
                                   "embeddings. Works from file:// or `python -m http.server -d OUT`.")
    p.add_argument("dir", help="dictionary folder (from `superpos fit`, or a SAELens folder)")
    p.add_argument("--store", required=True, help="activation store (.h5) holding the dictionary's layer")
    p.add_argument("--model", default=None, help="model for the tokenizer and unembedding (default: the store's model)")
    p.add_argument("--layer", type=int, default=None, help="store layer to encode (default: the dictionary's layer)")
    p.add_argument("--rows", type=positive(int), default=None, help="scan only the first N store rows (default: all)")
    p.add_argument("--top", type=positive(int), default=16, help="top-activating contexts per feature (default 16)")
    p.add_argument("--before", type=int, default=12, help="tokens shown before the activating token (default 12)")
    p.add_argument("--after", type=int, default=4, help="tokens shown after it (default 4)")
    p.add_argument("--n-tokens", type=positive(int), default=10,
                   help="promoted, suppressed and nearest tokens listed per feature (default 10)")
    p.add_argument("--chunk", type=positive(int), default=256, help="features per data file (default 256)")
    p.add_argument("--batch-size", type=positive(int), default=4096, help="rows encoded at a time (default 4096)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--out", default="site", help="output folder (default site; replaced if it holds a site)")
    p.set_defaults(func=cmd_browse)


def cmd_browse(args) -> int:
    """``superpos browse``: write the static feature site."""
    from superpos.browse import BrowseConfig, browse
    from superpos.errors import SuperposError

    if args.before < 0 or args.after < 0:
        raise SuperposError("--before and --after must be 0 or more")
    cfg = BrowseConfig(dictionary=args.dir, store=args.store, out=args.out, model=args.model, layer=args.layer,
                       rows=args.rows, top=args.top, before=args.before, after=args.after, n_tokens=args.n_tokens,
                       chunk=args.chunk, batch_size=args.batch_size, device=args.device, progress=not args.no_progress)
    res = browse(cfg)
    print(f"browse: {res['features']} features over {res['rows_scanned']} tokens in {res['seconds_total']:.0f} s; "
          f"site {res['site_bytes'] / 1e6:.1f} MB")
    print(f"open {res['index']}")
    return 0
