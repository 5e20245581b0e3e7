"""A Modbus TCP server built with pymodbus, for edge-agent/tests/modbus_interop.rs.

pymodbus is an implementation independent of tokio-modbus, and its own conversion
(`convert_to_registers`) encodes the values, so the test checks the agent's decoding against
someone else's idea of every layout, not against its own encoder.

Serves unit 1 on 127.0.0.1 at a port the system picks, prints that port on one line once it
listens, and exits when its standard input closes (the test holds the pipe). Addresses
outside the blocks below are not mapped: pymodbus answers them with an exception.

Run by scripts/test.sh through the virtual environment it creates (pymodbus 3.16).
"""

import asyncio
import sys

from pymodbus.client.mixin import ModbusClientMixin
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

T = ModbusClientMixin.DATATYPE


def encode(value, data_type, word_order="big"):
    return ModbusClientMixin.convert_to_registers(value, data_type, word_order=word_order)


def swap_bytes(registers):
    """The same words with the two bytes of each exchanged (layouts BADC and DCBA)."""
    return [((r & 0xFF) << 8) | (r >> 8) for r in registers]


def padded(registers, count):
    return registers + [0] * (count - len(registers))


# Holding registers 0..39, one contiguous block; the comments give the tag the test reads.
HOLDING = (
    encode(21.5, T.FLOAT32)  # 0: f32 ABCD
    + encode(-3.25, T.FLOAT32, "little")  # 2: f32 CDAB
    + encode(-123456, T.INT32)  # 4: i32 ABCD
    + encode(70000, T.UINT32, "little")  # 6: u32 CDAB
    + encode(54321, T.UINT16)  # 8: u16
    + encode(-42, T.INT16)  # 9: i16
    + padded(encode("PUMP-7 ", T.STRING), 6)  # 10: string, 6 registers, ABCD
    + padded(swap_bytes(encode("MOTOR", T.STRING)), 4)  # 16: string, 4 registers, BADC
    + encode(1234.5678, T.FLOAT64)  # 20: f64 ABCD
    + encode(13824, T.UINT16)  # 24: u16 with a range 0..27648 -> 0..100
    + [0b0000_0000_0010_0000]  # 25: bool, bit 5
    + [0] * 14  # 26..39: unused but mapped
)

COILS = [True, False, True, True, False, False, False, False]
DISCRETE = [False, True] + [False] * 6
INPUT = encode(777, T.UINT16) + encode(9.75, T.FLOAT32)  # 0: u16, 1: f32 ABCD


def device():
    return SimDevice(
        id=1,
        simdata=(
            [SimData(0, values=COILS, datatype=DataType.BITS)],
            [SimData(0, values=DISCRETE, datatype=DataType.BITS)],
            [SimData(0, values=HOLDING, datatype=DataType.REGISTERS)],
            [SimData(0, values=INPUT, datatype=DataType.REGISTERS)],
        ),
    )


async def main():
    server = ModbusTcpServer(device(), address=("127.0.0.1", 0))
    await server.serve_forever(background=True)
    port = server.transport.sockets[0].getsockname()[1]
    print(port, flush=True)
    # Blocks until the test closes the pipe (or dies, which closes it too).
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
