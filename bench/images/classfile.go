package images

import (
	"bytes"
	"encoding/binary"
)

// printlnClass returns a Java class file (version 61, Java 17) of a public
// class named class whose main method prints line to System.out.
//
// The class is assembled here rather than compiled so that building the java
// image needs neither a JDK on the host nor one in the image (the image
// carries only the JRE, as a deployed application would), and the class is
// the same bytes on every build. The layout is JVMS §4; a method without
// branches needs no StackMapTable, and a class without a constructor is legal.
func printlnClass(class, line string) []byte {
	var pool bytes.Buffer
	n := uint16(0)
	add := func(tag byte, data ...any) uint16 {
		pool.WriteByte(tag)
		for _, d := range data {
			binary.Write(&pool, binary.BigEndian, d)
		}
		n++
		return n
	}
	utf8 := func(s string) uint16 {
		return add(1, uint16(len(s)), []byte(s)) // CONSTANT_Utf8 (ASCII here: the same as modified UTF-8)
	}
	classRef := func(name string) uint16 { return add(7, utf8(name)) }
	nameAndType := func(name, desc string) uint16 { return add(12, utf8(name), utf8(desc)) }

	thisClass := classRef(class)
	superClass := classRef("java/lang/Object")
	out := add(9, classRef("java/lang/System"), nameAndType("out", "Ljava/io/PrintStream;")) // Fieldref
	println := add(10, classRef("java/io/PrintStream"), nameAndType("println", "(Ljava/lang/String;)V"))
	str := add(8, utf8(line)) // CONSTANT_String
	mainName, mainDesc, code := utf8("main"), utf8("([Ljava/lang/String;)V"), utf8("Code")

	bytecode := []byte{
		0xb2, byte(out >> 8), byte(out), // getstatic System.out
		0x13, byte(str >> 8), byte(str), // ldc_w line
		0xb6, byte(println >> 8), byte(println), // invokevirtual PrintStream.println
		0xb1, // return
	}

	var c bytes.Buffer
	w := func(data ...any) {
		for _, d := range data {
			binary.Write(&c, binary.BigEndian, d)
		}
	}
	w(uint32(0xcafebabe), uint16(0), uint16(61)) // magic, minor, major (Java 17)
	w(n+1, pool.Bytes())                         // constant_pool_count is one more than the entries
	w(uint16(0x0021), thisClass, superClass)     // ACC_PUBLIC|ACC_SUPER
	w(uint16(0), uint16(0), uint16(1))           // no interfaces, no fields, one method
	w(uint16(0x0009), mainName, mainDesc)        // ACC_PUBLIC|ACC_STATIC main(String[])
	w(uint16(1), code, uint32(12+len(bytecode))) // one attribute: Code
	w(uint16(2), uint16(1), uint32(len(bytecode)), bytecode)
	w(uint16(0), uint16(0)) // no exception table, no Code attributes
	w(uint16(0))            // no class attributes
	return c.Bytes()
}
