"""Command-line tools: convert, chat, bench, data_stats, train_tokenizer."""
