"""The data model. The schema itself exists only through migrations (see migrations/versions)."""
from .assets import Asset, AssetIdentifier
from .backfills import Backfill, BackfillWindow
from .datasets import Dataset, DatasetAsset
from .quotes import LatestQuote, Quote
from .readmodel import DataVersion, ReadModelPending, RunStats, SourceQuoteStats
from .runs import Checkpoint, CsvRowHashes, EtlRun, RawPayload, RejectedRecord
from .storage import Candle, QuotePartitioning, RawPage

__all__ = ["Asset", "AssetIdentifier", "Backfill", "BackfillWindow", "Dataset", "DatasetAsset", "Quote", "LatestQuote",
           "EtlRun", "Checkpoint", "RawPayload", "RejectedRecord", "DataVersion", "RunStats", "SourceQuoteStats",
           "ReadModelPending", "RawPage", "Candle", "QuotePartitioning", "CsvRowHashes"]
