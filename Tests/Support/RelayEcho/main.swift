import Hummingbird
import Logging

// `relay-echo [port]`: the relay's WebSocket layer as an echo server, for Autobahn (kosoku).
let port = CommandLine.arguments.dropFirst().first.flatMap(Int.init) ?? 9001
var logger = Logger(label: "relay-echo")
logger.logLevel = .warning
try await buildEchoApplication(host: "127.0.0.1", port: port, logger: logger).runService()
