import Foundation
import Testing

@testable import DeviceAuth

@Suite struct Base64URLTests {
    @Test func encodesTheRFC4648VectorsUnpaddedWithTheURLAlphabet() {
        let vectors = ["": "", "f": "Zg", "fo": "Zm8", "foo": "Zm9v", "foob": "Zm9vYg", "fooba": "Zm9vYmE", "foobar": "Zm9vYmFy"]
        for (text, encoded) in vectors { #expect(Base64URL.encode(Array(text.utf8)) == encoded) }
        // The two characters base64url changes: 62 is "-", 63 is "_".
        #expect(Base64URL.encode([0xFB, 0xFF]) == "-_8")
    }

    @Test func decodingGivesBackEveryLengthOfRandomBytes() {
        for count in 0...64 {
            let bytes = (0..<count).map { _ in UInt8.random(in: .min ... .max) }
            let encoded = Base64URL.encode(bytes)
            #expect(!encoded.contains("="))
            #expect(Base64URL.decode(Substring(encoded)).map(Array.init) == bytes)
        }
    }
}
