"""Binance through python-binance: `rest` (the REST client with Binance's fault handling), `brokers`
(spot and USDⓈ-M futures orders) and `feed` (the live trade stream and its klines)."""
