import Foundation
import OpenSSLCrypto
import Testing

/// The ids the relay gives links and sessions.
@Suite struct LibCryptoTests {
    @Test func randomUUIDsAreVersion4InLowercaseAndDistinct() throws {
        let ids = (0..<1000).map { _ in LibCrypto.randomUUID() }
        #expect(Set(ids).count == ids.count)
        for id in ids {
            let parsed = try #require(UUID(uuidString: id), "\(id)")
            #expect(parsed.uuidString.lowercased() == id)
            let bytes = Array(id.utf8)
            #expect(bytes[14] == UInt8(ascii: "4"), "version 4: \(id)")
            #expect("89ab".utf8.contains(bytes[19]), "RFC 4122 variant: \(id)")
        }
    }
}
