/// Runs libcurl's client for the life of the application (its global init and its transfers' threads).
import ServiceLifecycle
import TURNBroker

/// Stops the libcurl worker threads when the relay shuts down.
struct CurlClientService: Service {
    let client: CurlClient

    func run() async throws {
        try? await gracefulShutdown()
        try await client.shutdown()
    }
}
