"""Write: atomic files, the clean and quarantine Parquet of each batch, and the committed-file list a
training reader trusts."""
