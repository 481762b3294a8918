"""Binance through python-binance: `rest` (the REST client with Binance's fault handling), the brokers by
market (`spot`, `futures`, sharing the order path of `orders`, with `settle` for orders of unknown outcome,
`stops` for the stop kept on Binance, `filters` for exchangeInfo), `feed` (the live 1-minute kline stream,
gaps filled from REST) and `user_stream` (the account's order updates)."""
