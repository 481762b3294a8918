"""Binance through python-binance: `rest` (the REST client with Binance's fault handling), `brokers`
(spot and USDⓈ-M futures orders) and `feed` (the live 1-minute kline stream, gaps filled from REST)."""
