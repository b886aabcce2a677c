// swift-tools-version:6.1
import PackageDescription

let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
]

let package = Package(
    name: "relay",
    platforms: [.macOS(.v15), .iOS(.v18)],
    products: [
        .executable(name: "relay", targets: ["RelayCommand"]),
        .executable(name: "relay-bench", targets: ["RelayBench"]),
        .executable(name: "relay-load", targets: ["RelayLoad"]),
        .executable(name: "relay-echo", targets: ["RelayEcho"]),
        .executable(name: "relay-fuzz", targets: ["RelayFuzz"]),
        .library(name: "Relay", targets: ["Relay"]),
        // The client library for Swift apps and robots (Linux and Apple platforms).
        .library(name: "RelayClient", targets: ["RelayClient"]),
    ],
    dependencies: [
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
        .package(url: "https://github.com/hummingbird-project/hummingbird-websocket.git", from: "2.8.1"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-configuration.git", from: "1.4.0"),
        .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.10.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-collections.git", from: "1.6.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift.git", from: "0.2.0"),
        .package(url: "https://github.com/ordo-one/benchmark.git", from: "1.38.1", traits: ["MallocInterposer"]),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.35.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-system.git", from: "1.8.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.2"),
    ],
    targets: [
        // System-library shims: one per C library, each wrapped by one small Swift type.
        .systemLibrary(name: "CCurl", pkgConfig: "libcurl", providers: [.apt(["libcurl4-openssl-dev"])]),
        .systemLibrary(name: "CCrypto", pkgConfig: "libcrypto", providers: [.apt(["libssl-dev"])]),
        .systemLibrary(name: "CJWT", pkgConfig: "libjwt", providers: [.apt(["libjwt-dev"])]),

        // OpenSSL's libcrypto behind one small Swift type, shared by DeviceAuth and TURNBroker.
        .target(
            name: "OpenSSLCrypto",
            dependencies: ["CCrypto"],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "DeviceAuth",
            dependencies: [
                "CJWT", "OpenSSLCrypto", "RelayCore",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "TURNBroker",
            dependencies: [
                "CCurl", "OpenSSLCrypto",
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        // The embedded SQLite store: device registry and session audit log.
        .target(
            name: "Registry",
            dependencies: [
                "DeviceAuth", "OpenSSLCrypto", "RelayCore",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // The shared store for several nodes: the registry, the audit log, nonces and the live
        // state on PostgreSQL (postgres-nio), behind the same protocols as the SQLite store.
        .target(
            name: "PostgresStore",
            dependencies: [
                "DeviceAuth", "OpenSSLCrypto", "Registry", "RelayCore",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // The relay's rules as pure state machines and values: no NIO, no Hummingbird (the
        // compiler checks the layering), tested without sockets.
        .target(
            name: "RelayCore",
            dependencies: [.product(name: "DequeModule", package: "swift-collections")],
            swiftSettings: swiftSettings
        ),
        // A client of the relay for Swift apps and robots: the link, resume, reliable sending,
        // token refresh, typed events. HMAC by OpenSSL on Linux, CryptoKit on Apple's platforms.
        .target(
            name: "RelayClient",
            dependencies: [
                "RelayCore",
                .target(name: "OpenSSLCrypto", condition: .when(platforms: [.linux])),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
            ],
            exclude: ["README.md"],
            swiftSettings: swiftSettings
        ),
        // The browser client (clients/js: relay-client.js and its demo page), embedded in the
        // relay, which serves it at /client/relay-client.js and /demo.
        .target(
            name: "BrowserClient",
            path: "clients/js",
            exclude: ["README.md", "tests"],
            sources: ["BrowserClient.swift"],
            resources: [.embedInCode("relay-client.js"), .embedInCode("demo.html")],
            swiftSettings: swiftSettings
        ),
        // The server's connections: RFC 6455 on SwiftNIO, the upgrade gate, the open sockets;
        // used by the relay and by the echo server.
        .target(
            name: "RelayWebSocket",
            dependencies: [
                "OpenSSLCrypto", "RelayCore",
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                .product(name: "NIOHTTPTypesHTTP1", package: "swift-nio-extras"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "Relay",
            dependencies: [
                "BrowserClient", "DeviceAuth", "OpenSSLCrypto", "PostgresStore", "Registry", "RelayCore", "RelayWebSocket", "TURNBroker",
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Configuration", package: "swift-configuration"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                .product(name: "NIOHTTPTypesHTTP1", package: "swift-nio-extras"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings,
            plugins: ["BuildRevision"]
        ),
        // The git revision of the build, for `relay --version`, the logs, /healthz and metrics.
        .plugin(name: "BuildRevision", capability: .buildTool()),
        .executableTarget(
            name: "RelayCommand",
            dependencies: [
                "Relay", "RelayCore", "Registry", "PostgresStore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Configuration", package: "swift-configuration"),
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            swiftSettings: swiftSettings
        ),
        // Tests and benchmarks only: a local stand-in for Cloudflare's TURN API, a WebSocket client.
        .target(
            name: "RelayTestSupport",
            dependencies: [
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "HummingbirdWSClient", package: "hummingbird-websocket"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Tests/Support/RelayTestSupport",
            swiftSettings: swiftSettings
        ),
        // The relay's WebSocket layer as an echo server, for the Autobahn protocol cases.
        .executableTarget(
            name: "RelayEcho",
            dependencies: [
                "RelayWebSocket",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Tests/Support/RelayEcho",
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "RelayBench",
            dependencies: [
                "Relay", "DeviceAuth", "TURNBroker", "RelayTestSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Configuration", package: "swift-configuration"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Benchmarks/RelayBench",
            swiftSettings: swiftSettings
        ),
        // The load generator (BENCHMARKS.md): raw WebSocket clients on one SwiftNIO event loop
        // against a real `relay` process.
        .executableTarget(
            name: "RelayLoad",
            dependencies: [
                "DeviceAuth", "RelayTestSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            path: "Benchmarks/RelayLoad",
            swiftSettings: swiftSettings
        ),
        // Microbenchmarks of the per-connection and per-message costs: `swift package benchmark`.
        .executableTarget(
            name: "RelayMicro",
            dependencies: [
                "DeviceAuth", "Relay",
                .product(name: "Benchmark", package: "benchmark"),
            ],
            path: "Benchmarks/RelayMicro",
            swiftSettings: swiftSettings,
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
        // libFuzzer target for the message decoder and the token and signature parsers
        // (build with --sanitize=fuzzer; see the file's header).
        .target(name: "CFuzzMain", path: "Tests/Fuzz/CFuzzMain"),
        .executableTarget(
            name: "RelayFuzz",
            dependencies: ["Relay", "RelayCore", "DeviceAuth", "OpenSSLCrypto", "CFuzzMain"],
            path: "Tests/Fuzz/RelayFuzz",
            swiftSettings: swiftSettings + [.unsafeFlags(["-parse-as-library"])]
        ),
        .testTarget(
            name: "DeviceAuthTests",
            dependencies: ["DeviceAuth", "OpenSSLCrypto", "RelayCore"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "RelayClientTests",
            dependencies: [
                "DeviceAuth", "RelayClient", "RelayCore", "RelayTestSupport",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "RelayCoreTests",
            dependencies: ["RelayCore"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "RelayTests",
            dependencies: [
                "Relay", "RelayCore", "DeviceAuth", "OpenSSLCrypto", "PostgresStore", "Registry", "TURNBroker", "RelayTestSupport", "RelayWebSocket",
                .product(name: "Configuration", package: "swift-configuration"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "HummingbirdWSClient", package: "hummingbird-websocket"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "GRDB", package: "GRDB.swift"),
            ],
            swiftSettings: swiftSettings
        ),
    ]
)
